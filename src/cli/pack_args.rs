//! `pack` and `verify`, and the flags that decide how an archive is made (shared with `push`).

use super::*;

/// `robusto verify FILE`
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The archive; its manifest is FILE.manifest.json.
    pub file: PathBuf,
}

/// Archive container (`--format`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FormatArg {
    /// zip: entries compressed one by one, in parallel.
    Zip,
    /// tar: the whole stream compressed (.tar.gz, .tar.zst).
    Tar,
}

/// Compression codec (`--compress`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum CompressArg {
    /// No compression.
    None,
    /// DEFLATE, levels 0–9 (default 6).
    #[value(alias = "gzip")]
    Deflate,
    /// Zstandard, levels 1–22 (default 3).
    Zstd,
}

/// The flags that decide how an archive is made (shared by `pack` and `push`).
#[derive(Debug, Args)]
pub(crate) struct PackFlags {
    /// Archive format.
    #[arg(long, value_enum, default_value = "zip")]
    pub format: FormatArg,
    /// Compression: none, deflate (alias gzip) or zstd.
    #[arg(long = "compress", value_enum, default_value = "deflate")]
    pub compress: CompressArg,
    /// Compression level: deflate 0–9 (default 6), zstd 1–22 (default 3).
    #[arg(short = 'l', long)]
    pub level: Option<i32>,
    /// Leave out paths matching GLOB (repeatable). Without '/' it matches a name at any depth;
    /// with '/' the path relative to the packed folder.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read exclude globs from FILE, one per line ('#' starts a comment).
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Like --exclude, without regard to case (repeatable).
    #[arg(long = "iexclude", value_name = "GLOB")]
    pub iexclude: Vec<String>,
    /// Leave out every folder that holds a file or folder of this NAME (repeatable), e.g. .nobackup.
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Leave out cache folders: those holding a CACHEDIR.TAG with its signature.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out files larger than SIZE, e.g. 2GiB.
    #[arg(long, value_name = "SIZE")]
    pub exclude_larger_than: Option<String>,
    /// Also pack the paths listed in FILE, one per line ('#' starts a comment).
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// Do not descend into other file systems.
    #[arg(long)]
    pub one_file_system: bool,
    /// Store the files symlinks point to instead of the links (loops are detected).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Compression threads [default: all cores]; the output is the same for any count.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// `robusto pack PATH… -o FILE`
#[derive(Debug, Args)]
pub(crate) struct PackArgs {
    /// Files and folders to pack.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The archive to write (through FILE.partial), or - for standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print what would be packed (one name a line) and left out, the count of files and bytes,
    /// and an estimate of the archive's size; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to write the manifest [default: FILE.manifest.json]; required with -o -.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Chunk size of the manifest (the upload's unit of retry), e.g. 8MiB, 512K.
    #[arg(long, value_name = "SIZE", default_value = "8MiB")]
    pub chunk_size: String,
    /// How the archive is made.
    #[command(flatten)]
    pub flags: PackFlags,
}

/// Parses a chunk size: at least 1 KiB, at most 4 GiB.
pub(crate) fn parse_chunk_size(text: &str) -> Result<u64, UsageError> {
    let n = units::parse_size(text).map_err(|e| UsageError(format!("--chunk-size: {e}")))?;
    if !(1024..=(4u64 << 30)).contains(&n) {
        return Err(UsageError(format!(
            "--chunk-size must be between 1KiB and 4GiB, got {text}"
        )));
    }
    Ok(n)
}

impl PackFlags {
    /// The validated pack options for `paths` into `output`.
    pub(crate) fn to_options(
        &self,
        paths: Vec<PathBuf>,
        output: PathBuf,
        chunk_size: u64,
    ) -> Result<PackOptions, UsageError> {
        let format = match self.format {
            FormatArg::Zip => Format::Zip,
            FormatArg::Tar => Format::Tar,
        };
        let codec = match self.compress {
            CompressArg::None => Codec::None,
            CompressArg::Deflate => Codec::Deflate,
            CompressArg::Zstd => Codec::Zstd,
        };
        let compression = Compression::new(codec, self.level).map_err(|e| UsageError(e.to_string()))?;
        let threads = match self.threads {
            Some(0) => return Err(UsageError("--threads must be at least 1".into())),
            Some(n) => n,
            None => pack::default_threads(),
        };
        Ok(PackOptions {
            output,
            format,
            compression,
            chunk_size,
            threads,
            paths: {
                let mut paths = paths;
                for file in &self.files_from {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| UsageError(format!("--files-from {}: {e}", file.display())))?;
                    paths.extend(
                        text.lines()
                            .map(str::trim_end)
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .map(PathBuf::from),
                    );
                }
                if paths.is_empty() {
                    return Err(UsageError("nothing to pack: name a PATH or --files-from FILE".into()));
                }
                paths
            },
            walk: WalkOptions {
                exclude: self.exclude.clone(),
                exclude_from: self.exclude_from.clone(),
                one_file_system: self.one_file_system,
                follow_symlinks: self.follow_symlinks,
                never: Vec::new(),
                iexclude: self.iexclude.clone(),
                exclude_if_present: self.exclude_if_present.clone(),
                exclude_caches: self.exclude_caches,
                exclude_larger_than: self
                    .exclude_larger_than
                    .as_deref()
                    .map(robusto::units::parse_size)
                    .transpose()
                    .map_err(|e| UsageError(format!("--exclude-larger-than: {e}")))?,
            },
            keep_cached: false,
            growing: None,
            incremental: None,
            manifest: None,
            to_stdout: false,
        })
    }
}

impl PackArgs {
    /// The validated options.
    pub(crate) fn to_options(&self) -> Result<PackOptions, UsageError> {
        if self.dry_run {
            let chunk_size = parse_chunk_size(&self.chunk_size)?;
            return self
                .flags
                .to_options(self.paths.clone(), self.output.clone().unwrap_or_default(), chunk_size);
        }
        let Some(output) = self.output.clone() else {
            return Err(UsageError(
                "say where the archive goes: -o FILE (or -o - for standard output)".into(),
            ));
        };
        let chunk_size = parse_chunk_size(&self.chunk_size)?;
        let to_stdout = is_stdout(&output);
        if to_stdout && self.manifest.is_none() {
            return Err(UsageError(
                "-o - writes the archive to standard output: say where its manifest goes with --manifest FILE".into(),
            ));
        }
        if to_stdout {
            stdout_not_a_terminal("the archive")?;
        } else {
            replaceable("-o", &output)?;
            replaceable("-o", &robusto::durable::partial_path(&output))?;
        }
        let mut opts = self.flags.to_options(self.paths.clone(), output.clone(), chunk_size)?;
        opts.manifest = self.manifest.clone();
        opts.to_stdout = to_stdout;
        let manifest = opts.manifest_path();
        replaceable(if self.manifest.is_some() { "--manifest" } else { "-o" }, &manifest)?;
        if !to_stdout && manifest == output {
            return Err(UsageError(format!(
                "--manifest {} is the archive itself: name another file",
                manifest.display()
            )));
        }
        Ok(opts)
    }
}

/// Whether an output argument is `-`: standard output.
pub(crate) fn is_stdout(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// Refuses to write binary output to a terminal.
pub(crate) fn stdout_not_a_terminal(what: &str) -> Result<(), UsageError> {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        return Err(UsageError(format!(
            "-o - would write {what} to the terminal: redirect standard output to a file or a pipe"
        )));
    }
    Ok(())
}

/// Refuses an output path where something other than a regular file is (exit 2).
pub(crate) fn replaceable(flag: &str, path: &std::path::Path) -> Result<(), UsageError> {
    robusto::durable::check_replaceable(path).map_err(|e| UsageError(format!("{flag}: {e}")))
}
