//! `synod completion` and `synod man`: shell completion scripts (clap_complete)
//! and manual pages (clap_mangen), generated from the same clap definitions
//! as the command line itself, so they never drift from it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;

use super::{Cli, Output};

/// `synod completion --help`: how to install the script for each shell.
pub const COMPLETION_ABOUT: &str = "\
Print a shell completion script for bash, zsh or fish to stdout. It completes subcommands, \
flags and the values of flags that take a fixed set (e.g. -o table|json).

Install it for yourself:
  bash:  synod completion bash > ~/.local/share/bash-completion/completions/synod
         (needs the bash-completion package; or add `source <(synod completion bash)` to ~/.bashrc)
  zsh:   synod completion zsh > ~/.zfunc/_synod
         and in ~/.zshrc, before `compinit`: fpath=(~/.zfunc $fpath)
  fish:  synod completion fish > ~/.config/fish/completions/synod.fish

or for every user (what a package installs):
  bash:  /usr/share/bash-completion/completions/synod
  zsh:   /usr/share/zsh/vendor-completions/_synod
  fish:  /usr/share/fish/vendor_completions.d/synod.fish

Open a new shell afterwards. Regenerate the script after upgrading synod.";

/// `synod man --help`: reading the page and installing the pages.
pub const MAN_ABOUT: &str = "\
Print the manual page of synod (roff) to stdout, or with --out-dir write one page per \
subcommand: synod.1, synod-key.1, synod-key-create.1, ...

Read it without installing:  synod man | man -l -
Install the pages (what a package does):
  synod man --out-dir target/man && sudo install -m 0644 target/man/*.1 /usr/local/share/man/man1/
  then `man synod-key-create` (run `sudo mandb` if your man does not find it).

The pages are generated from the command line's own help, so they match this binary.";

/// Writes the completion script for `shell` to stdout.
pub fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    // Into memory first: clap_complete panics on a write error (a closed pipe), this reports it.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "synod", &mut script);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&script).and_then(|()| stdout.flush()).context("cannot write the completion script to stdout")?;
    Ok(())
}

/// Writes the top-level page to stdout, or every page into `out_dir`.
pub fn man(out_dir: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let Some(dir) = out_dir else {
        let mut stdout = std::io::stdout().lock();
        page(Cli::command()).render(&mut stdout).context("cannot write the manual page to stdout")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let mut command = Cli::command().disable_help_subcommand(true);
    // Building names each subcommand after its path (`synod-key-create`), which becomes its page's name.
    command.build();
    let mut pages = Vec::new();
    write_pages(command, dir, &mut pages)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "pages": pages }))?),
        Output::Table => println!("wrote {} manual pages to {}", pages.len(), dir.display()),
    }
    Ok(())
}

/// Writes the page of `command` and of each of its subcommands, depth first.
fn write_pages(command: clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, pages)?;
    }
    let man = page(command);
    let path =
        man.generate_to(dir).with_context(|| format!("cannot write {}", dir.join(man.get_filename()).display()))?;
    pages.push(path);
    Ok(())
}

/// One page, in the Synod manual, dated (an empty date would shift the
/// other fields of the page's `.TH` line by one).
fn page(command: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(command).date(page_date()).manual("Synod Manual")
}

/// The pages' date, `YYYY-MM-DD`: `SOURCE_DATE_EPOCH` when set (reproducible
/// package builds set it), today otherwise.
fn page_date() -> String {
    let source_date = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<u64>().ok());
    let when = match source_date {
        Some(secs) => std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        None => std::time::SystemTime::now(),
    };
    humantime::format_rfc3339_seconds(when).to_string()[..10].to_string()
}
