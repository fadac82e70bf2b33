//! Incremental archives (`push --incremental`): the first push of a job is a full archive (level
//! 0); each later one holds only what changed since the last push the server confirmed, and
//! says what was deleted, so that the chain full → incremental → … restores the tree exactly.
//!
//! - **The format is GNU tar's incremental format.** Every folder is a dumpdir entry (type `D`)
//!   listing its children: `Y name` stored in this archive, `N name` unchanged (stored by an
//!   earlier link), `D name` a folder. A name missing from its folder's dumpdir was deleted (or
//!   renamed away). `tar -x -G` (GNU tar) applies a chain link by link; `robusto restore` does
//!   the same, see [`chain`] and [`crate::restore`]. A dumpdir comes before its folder's
//!   contents, as in GNU tar's own archives.
//! - **"Changed"** ([`state`]): a file or link is stored again when its kind, size, mode, owner,
//!   modification or status-change time (to the nanosecond), inode or link target differ from
//!   what the last confirmed push recorded; a write always moves the status-change time, even
//!   when the modification time is put back.
//! - **The state advances only once the server confirmed the upload** ([`state::commit`]). A
//!   killed push leaves it as it was; a lost state directory means a new full archive, never a
//!   wrong incremental.
//! - Each link's manifest and upload metadata name its chain, level and parent ([`Link`]), so
//!   any machine with the token sees the chain in `list`, and `restore` and `prune` follow it.

pub mod chain;
pub mod dumpdir;
pub mod state;
pub mod tracker;

use serde::{Deserialize, Serialize};

use crate::fingerprint::Md5;

/// Where an archive stands in its chain (the manifest's `incremental`, the upload's metadata).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The chain: the name of its full archive.
    pub chain: String,
    /// 0 for the full archive, then 1, 2, … for each incremental after it.
    pub level: u32,
    /// The link this one applies on top of (none for the full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
}

/// The previous link of a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    /// Its upload name.
    pub name: String,
    /// Its archive's MD5.
    pub md5: Md5,
}

/// Upload metadata keys carrying a [`Link`].
pub mod meta {
    /// The chain's name (its full archive's).
    pub const CHAIN: &str = "robusto-chain";
    /// The level.
    pub const LEVEL: &str = "robusto-level";
    /// The parent's name.
    pub const PARENT: &str = "robusto-parent";
    /// The parent's MD5 (hex).
    pub const PARENT_MD5: &str = "robusto-parent-md5";
}

impl Link {
    /// The metadata pairs that carry this link.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![(meta::CHAIN, self.chain.clone()), (meta::LEVEL, self.level.to_string())];
        if let Some(p) = &self.parent {
            pairs.push((meta::PARENT, p.name.clone()));
            pairs.push((meta::PARENT_MD5, p.md5.hex()));
        }
        pairs
    }

    /// The link an upload's metadata describes; `None` for an upload that is not part of a
    /// chain (or whose chain metadata is damaged: it is then treated as standing alone).
    pub fn from_metadata(m: &std::collections::BTreeMap<String, String>) -> Option<Link> {
        let chain = m.get(meta::CHAIN)?.clone();
        let level: u32 = m.get(meta::LEVEL)?.parse().ok()?;
        let parent = match (m.get(meta::PARENT), m.get(meta::PARENT_MD5)) {
            (Some(name), Some(md5)) => Some(Parent {
                name: name.clone(),
                md5: Md5::from_hex(md5)?,
            }),
            _ => None,
        };
        if (level == 0) != parent.is_none() {
            return None;
        }
        Some(Link { chain, level, parent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_round_trips_through_metadata() {
        let link = Link {
            chain: "host-2026-12-01T020000.tar.zst".into(),
            level: 2,
            parent: Some(Parent {
                name: "host-2026-12-02T020000.tar.zst".into(),
                md5: Md5::of(b"x"),
            }),
        };
        let m: std::collections::BTreeMap<String, String> =
            link.metadata().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(Link::from_metadata(&m), Some(link));
        let mut broken = m.clone();
        broken.remove(meta::PARENT);
        assert_eq!(
            Link::from_metadata(&broken),
            None,
            "a level 2 without a parent stands alone"
        );
    }
}
