//! Both templates copied out of the workspace with `scripts/copy-template.py`
//! (as their READMEs tell users to) still build: the copy depends on this
//! library by path here (by git for users), with nothing inherited from the
//! workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn a_template_copied_out_of_the_workspace_builds() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // The workspace's own target directory: the dependencies are built already.
    let target: PathBuf = scratch
        .parent()
        .expect("target/tmp has a parent")
        .to_owned();
    for template in ["consumer-sqs", "consumer-sns"] {
        let name = format!("copied-{template}");
        let dest = scratch.join(&name);
        let _ = std::fs::remove_dir_all(&dest);
        let copy = Command::new("python3")
            .arg(repo.join("lambda/scripts/copy-template.py"))
            .args([
                template,
                dest.to_str().expect("UTF-8 path"),
                "--name",
                &name,
            ])
            .arg("--path")
            .arg(&repo)
            .output()
            .expect("python3 runs");
        assert!(
            copy.status.success(),
            "copy-template.py {template}: {}",
            String::from_utf8_lossy(&copy.stderr)
        );
        let manifest = std::fs::read_to_string(dest.join("Cargo.toml")).expect("Cargo.toml");
        assert!(
            !manifest.contains("workspace = true"),
            "nothing may be inherited from the workspace:\n{manifest}"
        );
        assert!(
            manifest.contains("walcast-lambda = { path = "),
            "{manifest}"
        );

        // The function's release profile (size-optimized) comes along, and the
        // workspace's panic = "unwind" with the profile (cargo-lambda builds with
        // panic = "abort" when the manifest's release profile does not set it).
        let config = std::fs::read_to_string(dest.join(".cargo/config.toml"))
            .expect(".cargo/config.toml copied");
        assert!(config.contains("opt-level = \"z\""), "{config}");
        assert!(
            manifest.contains("panic = \"unwind\""),
            "the release profile sets panic:\n{manifest}"
        );

        let build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--offline", "--quiet"])
            .current_dir(&dest)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("cargo runs");
        assert!(
            build.status.success(),
            "the copied {template} does not build:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        assert!(target.join("debug").join(&name).is_file(), "{name} built");
        std::fs::remove_dir_all(&dest).expect("clean up the copy");
    }
}
