//! Where the S3 store's credentials and region come from, as the AWS tools look for them: the
//! environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`
//! / `AWS_DEFAULT_REGION`), then the shared files (`~/.aws/credentials`, `~/.aws/config`, or
//! `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`) for `AWS_PROFILE` (default `default`).

use std::path::PathBuf;

/// Access key, secret and optional session token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// `aws_access_key_id`.
    pub access_key: String,
    /// `aws_secret_access_key`.
    pub secret_key: String,
    /// `aws_session_token`.
    pub session_token: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn profile() -> String {
    env("AWS_PROFILE").unwrap_or_else(|| "default".into())
}

fn aws_file(var: &str, name: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".aws").join(name)))
}

/// The `key = value` pairs of section `section` of an ini-style AWS file.
pub fn section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside = name == section || name.strip_prefix("profile ").map(str::trim) == Some(section);
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_lowercase(), v.trim().to_string()));
        }
    }
    out
}

fn from_file(var: &str, name: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(aws_file(var, name)?).ok()?;
    section(&text, &profile())
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The credentials, or why there are none.
pub fn keys() -> Result<Keys, String> {
    if let (Some(access_key), Some(secret_key)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Keys {
            access_key,
            secret_key,
            session_token: env("AWS_SESSION_TOKEN"),
        });
    }
    let file = |k| from_file("AWS_SHARED_CREDENTIALS_FILE", "credentials", k);
    match (file("aws_access_key_id"), file("aws_secret_access_key")) {
        (Some(access_key), Some(secret_key)) => Ok(Keys {
            access_key,
            secret_key,
            session_token: file("aws_session_token"),
        }),
        _ => Err(format!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give profile '{}' \
             aws_access_key_id and aws_secret_access_key in ~/.aws/credentials",
            profile()
        )),
    }
}

/// The region: the environment, the profile's `region` in the config file, or `us-east-1`.
pub fn region() -> String {
    env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| from_file("AWS_CONFIG_FILE", "config", "region"))
        .unwrap_or_else(|| "us-east-1".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_their_section() {
        let text = "[default]\naws_access_key_id = A\n# note\n[profile ceph]\nAWS_SECRET_ACCESS_KEY=S\nregion = eu\n";
        assert_eq!(section(text, "default"), vec![("aws_access_key_id".into(), "A".into())]);
        assert_eq!(
            section(text, "ceph"),
            vec![
                ("aws_secret_access_key".into(), "S".into()),
                ("region".into(), "eu".into())
            ]
        );
        assert!(section(text, "other").is_empty());
    }
}
