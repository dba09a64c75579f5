//! `tuning/check` reports what a host lacks, and fails when Culex could not start there.

use std::path::Path;
use std::process::{Command, Output};

fn check(shell_prefix: &str, sysctl_dir: Option<&Path>) -> (Output, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/check");
    let mut command = Command::new("bash");
    command.args(["-c", &format!("{shell_prefix} exec {script}")]);
    if let Some(dir) = sysctl_dir {
        command.env("CULEX_CHECK_SYSCTL_DIR", dir);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// A /proc/sys look-alike holding every setting of tuning/sysctl.conf at its recommended value,
/// with `io_uring_disabled` as given.
fn sysctl_tree(io_uring_disabled: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("culex-sysctl-{}-{io_uring_disabled}", std::process::id()));
    let recommended =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/sysctl.conf"))
            .unwrap();
    for line in recommended.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let Some((key, value)) = line.split_once('=') else { continue };
        let path = dir.join(key.trim().replace('.', "/"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{}\n", value.trim())).unwrap();
    }
    std::fs::write(dir.join("kernel/io_uring_disabled"), format!("{io_uring_disabled}\n")).unwrap();
    dir
}

#[test]
fn a_memlock_limit_below_glommios_minimum_is_missing() {
    let (out, stdout) = check("ulimit -S -l 256 && ulimit -H -l 256 &&", None);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISSING  memlock hard limit is 256 KiB"), "{stdout}");
}

#[test]
fn disabled_io_uring_is_missing() {
    let tree = sysctl_tree("2");
    let (out, stdout) = check("", Some(&tree));
    std::fs::remove_dir_all(&tree).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("MISSING  io_uring disabled (kernel.io_uring_disabled = 2)"),
        "{stdout}"
    );
}

#[test]
fn recommended_settings_pass_and_low_ones_are_named() {
    let tree = sysctl_tree("0");
    let (out, stdout) = check("ulimit -S -l 1024 &&", Some(&tree));
    assert!(stdout.contains("ok       kernel settings meet tuning/sysctl.conf"), "{stdout}");
    assert!(stdout.contains("ok       io_uring enabled"), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    std::fs::write(tree.join("net/core/somaxconn"), "128\n").unwrap();
    let (_, stdout) = check("", Some(&tree));
    std::fs::remove_dir_all(&tree).unwrap();
    assert!(stdout.contains("warn     net.core.somaxconn = 128; recommended 4096"), "{stdout}");
}
