//! `cargo xtask e2e SUITE`: end-to-end suites. Each suite gets one match arm below.

/// Runs the suite named by the first argument.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let Some(suite) = args.first() else {
        return Err("usage: cargo xtask e2e SUITE (`cargo xtask e2e --list` lists them)".into());
    };
    match suite.as_str() {
        // Suites are added here, one arm each, e.g. `"net" => net::run(&args[1..]),`.
        "--list" | "list" => {
            println!("e2e suites: none yet");
            Ok(())
        }
        other => Err(format!("unknown e2e suite `{other}`")),
    }
}
