//! Write each fuzz target's seeds into `fuzz/corpus/<target>/` (as `seed-N`), so that
//! libFuzzer starts from valid inputs. Existing files are left alone.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, _) in affinity_fuzz::TARGETS {
        let dir = root.join(target);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("affinity-fuzz-seeds: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        for (n, seed) in affinity_fuzz::seeds(target).iter().enumerate() {
            let path = dir.join(format!("seed-{n}"));
            if !path.exists()
                && let Err(e) = std::fs::write(&path, seed)
            {
                eprintln!("affinity-fuzz-seeds: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
