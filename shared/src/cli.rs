//! Shell completions and man pages, the same way for both binaries.

use std::path::Path;

/// Shells completions are made for.
pub use clap_complete::Shell;

/// Write `cmd`'s completion script for `shell` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn std::io::Write) {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name.clone(), &mut script);
    if shell == Shell::Bash && name.contains('-') {
        // clap_complete 4.6 names a hyphenated binary's subcommands two ways in its bash
        // script (`tollgate__broker__subcmd__serve` where it walks the words,
        // `tollgate__subcmd__broker__subcmd__serve` where it completes), so no option of a
        // subcommand ever completes. One spelling makes them meet.
        let text = String::from_utf8_lossy(&script)
            .replace(&name.replace('-', "__subcmd__"), &name.replace('-', "__"));
        script = text.into_bytes();
    }
    let _ = out.write_all(&script);
}

/// Write a man page for `cmd` and one for each of its subcommands (`tollgate-broker-serve.1`,
/// ...) into `dir`; returns the files written.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let cmd = cmd.disable_help_subcommand(true);
    write_page(&cmd, cmd.get_name(), dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> std::io::Result<()> {
    let page = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut file = std::fs::File::create(&path)?;
    clap_mangen::Man::new(page).render(&mut file)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
