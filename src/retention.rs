//! Retention: which completed uploads `robusto prune` keeps. Uploads are grouped by the name they
//! were given up to its date (`web-host-2026-11-21T0230.zip` is in group `web-host-`), and each
//! group keeps the newest N (`--keep-last`), the newest of each of the last N days with an
//! upload (`--keep-daily`) and of each of the last N ISO weeks (`--keep-weekly`), like restic's
//! `forget`. The newest upload of a group is always kept.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::Listed;

/// How many to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The newest N.
    pub last: usize,
    /// The newest of each of the last N days.
    pub daily: usize,
    /// The newest of each of the last N ISO weeks.
    pub weekly: usize,
    /// The newest of each of the last N calendar months.
    pub monthly: usize,
    /// The newest of each of the last N years.
    pub yearly: usize,
    /// Everything completed within this many seconds of the group's newest upload.
    pub within: Option<u64>,
}

/// The decision for one upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The upload.
    pub upload: Listed,
    /// Its group.
    pub group: String,
    /// Why it is kept (`last`, `daily`, `weekly`, `newest`); empty when it goes.
    pub reasons: Vec<&'static str>,
}

impl Decision {
    /// Whether the upload stays.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// The group of an upload name: everything before its date (`YYYY-MM-DD`), or the whole name
/// without extension when it has none.
pub fn group_of(name: &str) -> String {
    match date_at(name) {
        Some(i) => name[..i].to_string(),
        None => name.split('.').next().unwrap_or(name).to_string(),
    }
}

/// Where the date (`YYYY-MM-DD`) in `name` starts, if it has one.
fn date_at(name: &str) -> Option<usize> {
    let b = name.as_bytes();
    let is_date = |i: usize| {
        b.len() >= i + 10
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 5..i + 7].iter().all(u8::is_ascii_digit)
            && b[i + 7] == b'-'
            && b[i + 8..i + 10].iter().all(u8::is_ascii_digit)
    };
    (0..b.len()).find(|&i| is_date(i))
}

/// When `u` completed, in nanoseconds since the Unix epoch: the server's precise time, else its
/// seconds (`None`, oldest of all, without either).
pub fn completed_ns(u: &Listed) -> Option<u64> {
    u.completed_ns
        .or_else(|| u.completed.map(|s| s.saturating_mul(1_000_000_000)))
}

/// The part of an upload's name from its date on (`2026-11-21T023000.zip` of
/// `web-2026-11-21T023000.zip`), empty without a date: names made by the same template sort by it
/// in time order.
fn dated_part(name: &str) -> &str {
    &name[date_at(name).unwrap_or(name.len())..]
}

/// The order of uploads in time, oldest first: by the precise completion time, then by the date
/// in the name (for uploads the server timed to the same second), then the name, then the id; the
/// same every time for the same uploads.
pub fn oldest_first(a: &Listed, b: &Listed) -> std::cmp::Ordering {
    let key = |u: &'_ Listed| {
        (
            completed_ns(u),
            dated_part(&u.name).to_string(),
            u.name.clone(),
            u.id.clone(),
        )
    };
    key(a).cmp(&key(b))
}

/// Decides, per group, what `policy` keeps. Uploads without a completion time count as oldest.
pub fn decide(uploads: Vec<Listed>, policy: Policy) -> Vec<Decision> {
    let mut groups: BTreeMap<String, Vec<Listed>> = BTreeMap::new();
    for u in uploads {
        groups.entry(group_of(&u.name)).or_default().push(u);
    }
    let mut out = Vec::new();
    for (group, mut list) in groups {
        // newest first
        list.sort_by(|a, b| oldest_first(b, a));
        let mut days = BTreeSet::new();
        let mut weeks = BTreeSet::new();
        let mut months = BTreeSet::new();
        let mut years = BTreeSet::new();
        let newest = list.first().and_then(|u| u.completed);
        for (i, upload) in list.into_iter().enumerate() {
            let mut reasons = Vec::new();
            if i == 0 {
                reasons.push("newest");
            }
            if i < policy.last {
                reasons.push("last");
            }
            if let Some(t) = upload
                .completed
                .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t as i64).ok())
            {
                let day = t.date();
                if days.len() < policy.daily && !days.contains(&day) {
                    days.insert(day);
                    reasons.push("daily");
                }
                let (year, week, _) = t.to_iso_week_date();
                if weeks.len() < policy.weekly && !weeks.contains(&(year, week)) {
                    weeks.insert((year, week));
                    reasons.push("weekly");
                }
                let month = (t.year(), u8::from(t.month()));
                if months.len() < policy.monthly && !months.contains(&month) {
                    months.insert(month);
                    reasons.push("monthly");
                }
                if years.len() < policy.yearly && !years.contains(&t.year()) {
                    years.insert(t.year());
                    reasons.push("yearly");
                }
            }
            if let (Some(within), Some(newest), Some(at)) = (policy.within, newest, upload.completed)
                && newest.saturating_sub(at) <= within
            {
                reasons.push("within");
            }
            out.push(Decision {
                upload,
                group: group.clone(),
                reasons,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, day: u64, hour: u64) -> Listed {
        let t = 1_763_683_200 + day * 86_400 + hour * 3600; // 2025-11-21T00:00Z + …
        Listed {
            id: format!("{name}-{day}-{hour}"),
            url: String::new(),
            name: name.to_string(),
            size: 1,
            md5: None,
            completed: Some(t),
            completed_ns: None,
            completed_at: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn groups_by_the_name_before_its_date() {
        assert_eq!(group_of("web-host-2026-11-21T023000.zip"), "web-host-");
        assert_eq!(group_of("db-2026-01-02.tar.zst"), "db-");
        assert_eq!(group_of("plain.zip"), "plain");
    }

    #[test]
    fn keeps_last_daily_weekly_and_always_the_newest() {
        let mut all = Vec::new();
        for day in 0..21 {
            for hour in [1, 13] {
                all.push(up(&format!("web-2025-11-{:02}.zip", 21 + day % 9), day, hour));
            }
        }
        all.push(up("db-2025-11-21.zip", 0, 5));
        let d = decide(
            all,
            Policy {
                last: 2,
                daily: 3,
                weekly: 2,
                ..Policy::default()
            },
        );
        let kept: Vec<_> = d
            .iter()
            .filter(|x| x.keep())
            .map(|x| (x.group.as_str(), x.upload.id.clone(), x.reasons.clone()))
            .collect();
        // db: its only upload is the newest
        assert!(kept.iter().any(|(g, _, r)| *g == "db-" && r.contains(&"newest")));
        let web: Vec<_> = kept.iter().filter(|(g, _, _)| *g == "web-").collect();
        // last 2 (day 20 13h, day 20 1h), daily 3 (days 20, 19, 18 at 13h), weekly 2 (newest of
        // this week and of the week before): 2 + 2 + 1 = 5 distinct uploads
        assert_eq!(web.len(), 5, "{web:?}");
        assert!(web[0].2.contains(&"newest") && web[0].2.contains(&"last") && web[0].2.contains(&"daily"));
        let gone = d.iter().filter(|x| !x.keep()).count();
        assert_eq!(gone, 42 - 5);
    }

    #[test]
    fn keeps_monthly_yearly_and_within() {
        // one upload a day for 70 days from 2025-11-21
        let all: Vec<Listed> = (0..70).map(|d| up("web-", d, 12)).collect();
        let kept = |p: Policy| -> Vec<(u64, Vec<&'static str>)> {
            decide(all.clone(), p)
                .into_iter()
                .filter(|x| x.keep())
                .map(|x| ((x.upload.completed.unwrap_or(0) - 1_763_683_200) / 86_400, x.reasons))
                .collect()
        };
        // the newest of 2026-01 (day 69: 2026-01-29), of 2025-12 (day 40), of 2025-11 (day 9)
        let monthly = kept(Policy {
            monthly: 3,
            ..Policy::default()
        });
        assert_eq!(monthly.iter().map(|k| k.0).collect::<Vec<_>>(), [69, 40, 9]);
        let yearly = kept(Policy {
            yearly: 5,
            ..Policy::default()
        });
        assert_eq!(yearly.iter().map(|k| k.0).collect::<Vec<_>>(), [69, 40]);
        let within = kept(Policy {
            within: Some(2 * 86_400),
            ..Policy::default()
        });
        assert_eq!(within.iter().map(|k| k.0).collect::<Vec<_>>(), [69, 68, 67]);
        assert!(within.iter().all(|k| k.1.contains(&"within")));
    }

    #[test]
    fn uploads_of_one_second_keep_their_order() {
        // the same second; the ids in the opposite order of completion
        let mut all: Vec<Listed> = (0..5u64)
            .map(|i| {
                let mut u = up("web-2025-11-21T023000.zip", 0, 0);
                u.id = format!("{}", 9 - i);
                u.completed_ns = u.completed.map(|s| s * 1_000_000_000 + i * 1000);
                u
            })
            .collect();
        all.reverse();
        let d = decide(
            all.clone(),
            Policy {
                last: 2,
                ..Policy::default()
            },
        );
        let kept: Vec<_> = d.iter().filter(|x| x.keep()).map(|x| x.upload.id.as_str()).collect();
        assert_eq!(kept, ["5", "6"], "the two completed last");
        // without precise times (an older server): the date in the name, then the name
        let mut old = vec![
            up("web-2025-11-21T023001.zip", 0, 0),
            up("web-2025-11-21T023000.zip", 0, 0),
        ];
        old[0].id = "a".into();
        old[1].id = "b".into();
        let mut sorted = old.clone();
        sorted.sort_by(oldest_first);
        assert_eq!(sorted[1].name, "web-2025-11-21T023001.zip");
        all.sort_by(oldest_first);
        let ids: Vec<_> = all.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["9", "8", "7", "6", "5"]);
    }

    #[test]
    fn keep_nothing_still_keeps_the_newest() {
        let d = decide(
            vec![up("a-2025-11-21.zip", 0, 1), up("a-2025-11-22.zip", 1, 1)],
            Policy::default(),
        );
        assert_eq!(d.iter().filter(|x| x.keep()).count(), 1);
        assert!(
            d.iter()
                .find(|x| x.keep())
                .unwrap()
                .upload
                .id
                .starts_with("a-2025-11-22")
        );
    }
}
