//! Running external commands with a visible command line.

use std::process::{Command, Stdio};

/// `cmd` as a shell-like line: environment overrides, program, arguments, directory.
pub(crate) fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    let mut line = parts.join(" ");
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!("    (in {})", dir.display()));
    }
    line
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=+./,:@%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio, echoing it first; fails unless it exits with 0.
pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    let line = show(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start `{line}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` failed ({status})"))
    }
}

/// Runs `cmd` echoing it, captures its stdout (stderr is inherited) and fails unless it
/// exits with 0.
pub(crate) fn output(cmd: &mut Command) -> Result<String, String> {
    let line = show(cmd);
    println!("$ {line}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start `{line}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{line}` failed ({})", out.status))
    }
}

/// Whether `cmd` starts and exits with 0; its output is discarded.
pub(crate) fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `cargo` command (the rustup proxy, so `+nightly` works) with `args`.
pub(crate) fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args);
    cmd
}
