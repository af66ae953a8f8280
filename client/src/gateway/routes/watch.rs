//! Reloading a route file when its content changes.

/// Read the route file at `path` every `interval`. When its content differs from `current`
/// (by content, so a ConfigMap's symlink swap or an editor's rename both count and a touch
/// alone does not) and `parse` accepts it, hand the result to `apply`, which puts it in
/// force and returns how many rules it holds; a file that does not parse is logged with
/// the field and rule at fault, and what is in force stays. Each outcome counts on the
/// counter `metric` (`result` = `ok` or `error`). Runs until the process ends.
pub async fn watch_file<T>(
    path: std::path::PathBuf,
    interval: std::time::Duration,
    mut current: Vec<u8>,
    parse: impl Fn(&str) -> Result<T, String>,
    apply: impl Fn(T) -> usize,
    metric: &'static str,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A ConfigMap update briefly removes the file; the next tick sees the new one.
        let Ok(bytes) = tokio::fs::read(&path).await else {
            continue;
        };
        if bytes == current {
            continue;
        }
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| "not UTF-8".to_string())
            .and_then(&parse);
        match parsed {
            Ok(table) => {
                let rules = apply(table);
                metrics::counter!(metric, "result" => "ok").increment(1);
                tracing::info!(path = %path.display(), rules, "route file reloaded");
            }
            Err(e) => {
                metrics::counter!(metric, "result" => "error").increment(1);
                tracing::error!(path = %path.display(), error = %e, "route file not reloaded; keeping the routes in force");
            }
        }
        current = bytes;
    }
}
