//! Chains among a server's completed uploads: which uploads a restore needs (the full first),
//! and the units retention keeps or removes whole.

use std::collections::BTreeMap;

use super::Link;
use crate::protocol::Listed;

/// Why a chain cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A link the chain needs is not on the server (or not with the MD5 its child names).
    #[error(
        "{name} is level {level} of chain {chain}, but its parent {parent} (md5 {md5}) is not on the server: \
         the chain is broken and cannot be restored past it"
    )]
    Missing {
        /// The upload whose parent is missing.
        name: String,
        /// Its level.
        level: u32,
        /// Its chain.
        chain: String,
        /// The parent it names.
        parent: String,
        /// The parent's MD5 (hex).
        md5: String,
    },
    /// The links do not lead back to a full archive (a cycle, or levels that do not descend).
    #[error("the chain of {0} does not lead back to a full archive")]
    Loop(String),
}

/// The uploads `target` needs, full archive first, `target` last; just `target` when it is not
/// an incremental.
pub fn links_of<'a>(target: &'a Listed, all: &'a [Listed]) -> Result<Vec<&'a Listed>, ChainError> {
    let mut chain = vec![target];
    let mut at = target;
    while let Some(link) = Link::from_metadata(&at.metadata) {
        let Some(parent) = &link.parent else { break };
        let found = all
            .iter()
            .find(|u| u.name == parent.name && u.md5.as_deref() == Some(parent.md5.hex().as_str()));
        let Some(up) = found else {
            return Err(ChainError::Missing {
                name: at.name.clone(),
                level: link.level,
                chain: link.chain.clone(),
                parent: parent.name.clone(),
                md5: parent.md5.hex(),
            });
        };
        let up_level = Link::from_metadata(&up.metadata).map(|l| l.level);
        if up_level != Some(link.level.wrapping_sub(1)) || chain.len() > 100_000 {
            return Err(ChainError::Loop(target.name.clone()));
        }
        chain.push(up);
        at = up;
    }
    chain.reverse();
    Ok(chain)
}

/// The chain an upload belongs to, for retention: its chain's name, or its own id when it stands
/// alone.
pub fn unit_of(u: &Listed) -> String {
    match Link::from_metadata(&u.metadata) {
        Some(link) => format!("chain:{}", link.chain),
        None => format!("upload:{}", u.id),
    }
}

/// Uploads by the unit they are kept or removed with.
pub fn units(uploads: &[Listed]) -> BTreeMap<String, Vec<&Listed>> {
    let mut out: BTreeMap<String, Vec<&Listed>> = BTreeMap::new();
    for u in uploads {
        out.entry(unit_of(u)).or_default().push(u);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Md5;
    use crate::incremental::Parent;

    fn upload(name: &str, link: Option<Link>) -> Listed {
        let md5 = Md5::of(name.as_bytes()).hex();
        Listed {
            id: format!("id-{name}"),
            url: format!("/files/id-{name}"),
            name: name.into(),
            size: 1,
            md5: Some(md5),
            completed: Some(1),
            completed_ns: None,
            completed_at: None,
            metadata: link
                .map(|l| l.metadata().into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                .unwrap_or_default(),
        }
    }

    fn link(level: u32, parent: Option<&str>) -> Link {
        Link {
            chain: "full".into(),
            level,
            parent: parent.map(|p| Parent {
                name: p.into(),
                md5: Md5::of(p.as_bytes()),
            }),
        }
    }

    #[test]
    fn a_chain_leads_back_to_its_full_archive() {
        let all = vec![
            upload("full", Some(link(0, None))),
            upload("i1", Some(link(1, Some("full")))),
            upload("i2", Some(link(2, Some("i1")))),
            upload("alone", None),
        ];
        let names = |v: Vec<&Listed>| v.iter().map(|u| u.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(links_of(&all[2], &all).unwrap()), ["full", "i1", "i2"]);
        assert_eq!(names(links_of(&all[3], &all).unwrap()), ["alone"]);
        let broken: Vec<Listed> = vec![all[0].clone(), all[2].clone()];
        let e = links_of(&broken[1], &broken).unwrap_err();
        assert!(e.to_string().contains("its parent i1"), "{e}");
        assert_eq!(units(&all).len(), 2);
    }
}
