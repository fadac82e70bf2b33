//! What the command line says about itself, generated from its clap definitions so that it is
//! never out of date: shell completions (`robusto completions bash|zsh|fish`, clap_complete) and
//! the man page (`robusto man`, roff by clap_mangen): the command and its global options, then
//! each command with its synopsis, description, own options and examples.

use std::io::{self, Write};

/// The examples at the end of each command's `--help` (and in the man page); each line at most
/// 78 columns, so that no terminal wraps it.
pub(crate) mod examples {

    /// `robusto pack`
    pub(crate) const PACK: &str = "Examples:
  robusto pack ~/Documents -o docs.zip
  robusto pack /srv/www -o www.tar.zst --format tar --compress zstd -l 9
  robusto pack ~/Documents --exclude '*.tmp' --exclude cache -o docs.zip
  robusto pack ~/Documents -o - --manifest docs.json | ssh host 'cat > d.zip'";
    /// `robusto verify`
    pub(crate) const VERIFY: &str = "Examples:
  robusto verify docs.zip";
    /// `robusto send`
    pub(crate) const SEND: &str = "Examples:
  robusto send docs.zip --to https://backup.example.org/files/ \\
    --token-file ~/.config/robusto/token
  robusto send docs.zip --to ./received --parallel 4 --bwlimit 2M";
    /// `robusto status`
    pub(crate) const STATUS: &str = "Examples:
  robusto status https://backup.example.org/files/0123456789abcdef";
    /// `robusto get`
    pub(crate) const GET: &str = "Examples:
  robusto get https://backup.example.org/files/0123456789abcdef -o docs.zip
  robusto get https://backup.example.org/files/0123456789abcdef -o - | tar -x";
    /// `robusto push`
    pub(crate) const PUSH: &str = "Examples:
  robusto push ~/Documents --to https://backup.example.org/files/ \\
    --token-file ~/.config/robusto/token
  robusto push /etc /home --to ./received --format tar --compress zstd
  robusto push --profile nightly";
    /// `robusto restore`
    pub(crate) const RESTORE: &str = "Examples:
  robusto restore docs.zip --into ~/restored
  robusto restore myhost- --from https://backup.example.org/files/ \\
    --into /tmp/restore --at 2026-12-01";
    /// `robusto serve`
    pub(crate) const SERVE: &str = "Examples:
  robusto serve --data /srv/robusto
  robusto serve --listen 0.0.0.0:1080 --data /srv/robusto \\
    --token-file /etc/robusto/tokens \\
    --tls-cert /etc/robusto/fullchain.pem --tls-key /etc/robusto/privkey.pem";
    /// `robusto list`
    pub(crate) const LIST: &str = "Examples:
  robusto list --from https://backup.example.org/files/ --json";
    /// `robusto prune`
    pub(crate) const PRUNE: &str = "Examples:
  robusto prune --from https://backup.example.org/files/ \\
    --keep-daily 14 --keep-weekly 8 --dry-run";
    /// `robusto config check`
    pub(crate) const CONFIG_CHECK: &str = "Examples:
  robusto config check
  robusto config check --profile nightly --config /etc/robusto/robusto.toml";
    /// `robusto completions`
    pub(crate) const COMPLETIONS: &str = "Examples:
  robusto completions bash > /etc/bash_completion.d/robusto
  robusto completions zsh > ~/.zfunc/_robusto";
    /// `robusto man`
    pub(crate) const MAN: &str = "Examples:
  robusto man > /usr/local/share/man/man1/robusto.1
  robusto man | man -l -";

    #[cfg(test)]
    mod tests {
        #[test]
        fn no_example_line_is_wider_than_78_columns() {
            for text in [
                super::PACK,
                super::VERIFY,
                super::SEND,
                super::STATUS,
                super::GET,
                super::PUSH,
                super::RESTORE,
                super::SERVE,
                super::LIST,
                super::PRUNE,
                super::CONFIG_CHECK,
                super::COMPLETIONS,
                super::MAN,
            ] {
                for line in text.lines() {
                    assert!(line.chars().count() <= 78, "{line}");
                }
            }
        }
    }
}

/// Writes the completion script of `shell` for the whole command line.
pub(crate) fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = super::profile::command();
    // generated in memory: clap_complete panics on a failed write (a closed pipe)
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "robusto", &mut script);
    out.write_all(&script)?;
    out.flush()
}

/// Writes the man page: `robusto(1)` with every command in it, in plain ASCII (other characters
/// as roff's `\[uXXXX]`, so that any troff reads it).
pub(crate) fn man_page(out: &mut dyn Write) -> io::Result<()> {
    let mut page = Vec::new();
    write_page(&mut page)?;
    // every part clap_mangen renders repeats the definition of the apostrophe string
    let mut defined = std::collections::HashSet::new();
    for line in String::from_utf8_lossy(&page).lines() {
        let definition = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if definition && !defined.insert(line.to_string()) {
            continue;
        }
        let mut ascii = String::with_capacity(line.len());
        for c in line.chars() {
            if c.is_ascii() {
                ascii.push(c);
            } else {
                ascii.push_str(&format!("\\[u{:04X}]", u32::from(c)));
            }
        }
        writeln!(out, "{ascii}")?;
    }
    Ok(())
}

fn write_page(out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = super::profile::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().as_str().to_string())
        .collect();
    for sub in leaves(&cmd) {
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name()).to_string();
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        // the global options are said once, above
        let mut own = sub.clone();
        for id in &globals {
            if own.get_arguments().any(|a| a.get_id() == id.as_str()) {
                own = own.mut_arg(id, |a| a.hide(true));
            }
        }
        let man = clap_mangen::Man::new(own.clone());
        let mut sections = Vec::new();
        man.render_synopsis_section(&mut sections)?;
        man.render_description_section(&mut sections)?;
        if own.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut sections)?;
        }
        // within a command's section its parts are subsections
        for line in String::from_utf8_lossy(&sections).lines() {
            match line.strip_prefix(".SH ") {
                Some(heading) => writeln!(out, ".SS {heading}")?,
                None => writeln!(out, "{line}")?,
            }
        }
        if let Some(after) = sub.get_after_help() {
            let text = after.to_string();
            let mut lines = text.lines().peekable();
            if lines
                .peek()
                .is_some_and(|l| l.trim_end_matches(':').eq_ignore_ascii_case("examples"))
            {
                lines.next();
            }
            writeln!(out, ".SS EXAMPLES\n.nf")?;
            for line in lines {
                writeln!(out, "{}", roff_line(line.strip_prefix("  ").unwrap_or(line)))?;
            }
            writeln!(out, ".fi")?;
        }
    }
    man.render_version_section(out)
}

/// The commands that do something (`config check`, not `config`), in their order.
fn leaves(cmd: &clap::Command) -> Vec<&clap::Command> {
    cmd.get_subcommands()
        .filter(|s| s.get_name() != "help")
        .flat_map(|s| if s.has_subcommands() { leaves(s) } else { vec![s] })
        .collect()
}

/// A line of text as roff prints it verbatim: backslashes and dashes escaped, a leading dot or
/// quote kept from being read as a request.
fn roff_line(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_lines_are_printed_as_written() {
        assert_eq!(roff_line(r"a -b \c"), r"a \-b \ec");
        assert_eq!(roff_line(".hidden"), r"\&.hidden");
    }
}
