//! Leadership histories and their invariants (openraft's `election_safety`): one leader at a
//! time, and fencing tokens that strictly increase from term to term.

use std::time::Duration;

/// One leadership term as an actor observed it: who, which token, from when to when (times on
/// one monotonic clock, as offsets from a common origin).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// The leader's identity.
    pub who: String,
    /// The term's fencing token.
    pub token: u64,
    /// When it started acting.
    pub start: Duration,
    /// When it stopped acting (`None`: still acting at the end of the history).
    pub end: Option<Duration>,
}

/// Checks that no two intervals overlap and that tokens strictly increase in start order.
///
/// # Errors
/// A description of the first violation.
pub fn check(intervals: &[Interval]) -> Result<(), String> {
    let mut sorted = intervals.to_vec();
    sorted.sort_by_key(|i| i.start);
    for pair in sorted.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        match a.end {
            None => {
                return Err(format!(
                    "{} (token {}) never stopped, yet {} started at {:?}",
                    a.who, a.token, b.who, b.start
                ));
            }
            Some(end) if end > b.start => {
                return Err(format!(
                    "overlap: {} (token {}) acted until {:?}, {} (token {}) started at {:?}",
                    a.who, a.token, end, b.who, b.token, b.start
                ));
            }
            _ => {}
        }
        if b.token <= a.token {
            return Err(format!(
                "token did not increase: {} had {}, then {} had {}",
                a.who, a.token, b.who, b.token
            ));
        }
    }
    Ok(())
}

/// Parses lines `start <who> <token> <nanos>` / `stop <who> <token> <nanos>` (the format the CLI
/// tests' child scripts append) into intervals.
///
/// # Errors
/// On a line that does not parse or a stop without a start.
pub fn parse_log(text: &str) -> Result<Vec<Interval>, String> {
    let mut out: Vec<Interval> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [kind, who, token, nanos] = f.as_slice() else {
            return Err(format!("bad line {line:?}"));
        };
        let token: u64 = token
            .parse()
            .map_err(|_| format!("bad token in {line:?}"))?;
        let at = Duration::from_nanos(nanos.parse().map_err(|_| format!("bad time in {line:?}"))?);
        match *kind {
            "start" => out.push(Interval {
                who: (*who).to_owned(),
                token,
                start: at,
                end: None,
            }),
            "stop" => {
                let open = out
                    .iter_mut()
                    .rev()
                    .find(|i| i.who == *who && i.token == token && i.end.is_none())
                    .ok_or_else(|| format!("stop without start: {line:?}"))?;
                open.end = Some(at);
            }
            _ => return Err(format!("bad line {line:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_overlaps_and_token_regressions() {
        let s = Duration::from_secs;
        let ok = parse_log("start a 1 0\nstop a 1 1000000000\nstart b 2 2000000000\n").unwrap();
        assert_eq!(check(&ok), Ok(()));
        let overlap = vec![
            Interval {
                who: "a".into(),
                token: 1,
                start: s(0),
                end: Some(s(3)),
            },
            Interval {
                who: "b".into(),
                token: 2,
                start: s(2),
                end: None,
            },
        ];
        assert!(check(&overlap).unwrap_err().contains("overlap"));
        let regress = vec![
            Interval {
                who: "a".into(),
                token: 2,
                start: s(0),
                end: Some(s(1)),
            },
            Interval {
                who: "b".into(),
                token: 2,
                start: s(2),
                end: None,
            },
        ];
        assert!(check(&regress).unwrap_err().contains("did not increase"));
    }
}
