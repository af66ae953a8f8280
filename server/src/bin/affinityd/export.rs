//! `affinityd export`: a stopped node's data directory written out as a backup.

use std::path::Path;

use crate::settings::Settings;

pub(crate) async fn export(settings: &Settings, out: &Path) -> Result<(), String> {
    let config = &settings.config;
    let exported = if out == Path::new("-") {
        let stdout = std::io::stdout().lock();
        affinity_server::store::export::export_to(&config.data_dir, &config.storage, stdout).await
    } else {
        affinity_server::store::export::export(&config.data_dir, &config.storage, out).await
    }
    .map_err(|e| e.to_string())?;
    let summary = serde_json::json!({
        "file": out,
        "data_dir": config.data_dir,
        "last_log_index": exported.last_log_index,
        "replayed_entries": exported.replayed_entries,
        "lease_count": exported.lease_count,
        "bytes": exported.bytes,
    });
    if out == Path::new("-") {
        eprintln!("{summary}");
    } else {
        println!("{summary:#}");
    }
    Ok(())
}
