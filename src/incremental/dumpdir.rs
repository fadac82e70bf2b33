//! GNU tar's dumpdir: the contents of a `D` entry, one record per child of the folder, `C name\0`
//! with `C` one of `Y` (stored in this archive), `N` (not stored: unchanged since an earlier
//! archive) or `D` (a folder), sorted by name, ended by one more `\0`.

/// What a dumpdir says of one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Child {
    /// A file or link stored in this archive.
    Stored,
    /// A file or link not stored in this archive: an earlier link of the chain has it.
    Unchanged,
    /// A folder (it has a dumpdir of its own).
    Folder,
}

impl Child {
    fn letter(self) -> u8 {
        match self {
            Child::Stored => b'Y',
            Child::Unchanged => b'N',
            Child::Folder => b'D',
        }
    }
}

/// The dumpdir of a folder with `children` (base names).
pub fn encode(children: &mut [(String, Child)]) -> Vec<u8> {
    children.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(children.iter().map(|(n, _)| n.len() + 2).sum::<usize>() + 1);
    for (name, child) in children.iter() {
        out.push(child.letter());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    out.push(0);
    out
}

/// The children a dumpdir lists. Records of other kinds GNU tar writes (`R`, `T` renames, `X`
/// temporary) name nothing that stays, and are left out.
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, Child)>, String> {
    let mut out = Vec::new();
    for record in bytes.split(|&b| b == 0) {
        let Some((&letter, name)) = record.split_first() else {
            continue;
        };
        let name = std::str::from_utf8(name).map_err(|_| "a dumpdir name is not UTF-8".to_string())?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!("a dumpdir names '{name}', which is not a child's name"));
        }
        let child = match letter {
            b'Y' => Child::Stored,
            b'N' => Child::Unchanged,
            b'D' => Child::Folder,
            b'R' | b'T' | b'X' => continue,
            other => return Err(format!("a dumpdir record starts with '{}'", other as char)),
        };
        out.push((name.to_string(), child));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dumpdir_round_trips_sorted() {
        let mut children = vec![
            ("b.txt".to_string(), Child::Unchanged),
            ("a".to_string(), Child::Folder),
            ("c".to_string(), Child::Stored),
        ];
        let bytes = encode(&mut children);
        assert_eq!(bytes, b"Da\0Nb.txt\0Yc\0\0");
        assert_eq!(decode(&bytes).unwrap(), children);
        assert_eq!(encode(&mut []), b"\0");
        assert!(decode(b"Y../x\0\0").is_err());
        assert!(decode(b"Qx\0\0").is_err());
    }
}
