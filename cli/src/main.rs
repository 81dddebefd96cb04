//! The `synod` binary: one executable for nodes and clients, like `vault server`
//! and `vault operator`.

use clap::{CommandFactory, FromArgMatches};
use synod_cli::display;

fn main() -> std::process::ExitCode {
    // One rustls crypto provider for the whole process (ring), before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A usage error (a bad flag) is clap's own message and exit code.
    let matches = synod_cli::Cli::command().get_matches();
    // A failure prints as the command's result would have: JSON under `-o json`.
    display::set_json_stderr(synod_cli::requested_output(&matches) == synod_cli::Output::Json);
    let cli = synod_cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Before any thread exists: move secret variables out of the environment
    // (and out of /proc/<pid>/environ), then drop core dumps and ptrace by
    // other users; a node also locks its memory. See synod_node::hygiene.
    synod_node::hygiene::take_env_secrets(&synod_cli::secret_env_names(&cli));
    synod_node::hygiene::harden(synod_cli::hardening_steps(&cli));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            display::error(&format!("cannot start the async runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(synod_cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            display::error(&format!("{e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}
