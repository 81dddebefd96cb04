//! The `synod` binary: one executable for nodes and clients, like `vault server`
//! and `vault operator`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // One rustls crypto provider for the whole process (ring), before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = synod_cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(synod_cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
