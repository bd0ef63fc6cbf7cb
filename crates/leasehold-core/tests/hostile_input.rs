//! Hostile and broken input for the record codec and the state machine: arbitrary bytes,
//! missing and null fields, wrong types, negative or huge numbers, times far in the past or
//! future, identities with control characters or a megabyte long. Each gives a typed error or a
//! defined interpretation; none panics, and a decoded record encodes and decodes to itself.

use leasehold_core::{
    Action, Event, LeaderRecord, Machine, Timing, Version, Versioned, lock::ErrorKind,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::time::Duration;

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        // Times: valid, far past/future, and malformed.
        (-62_135_596_800i64..253_402_300_799i64).prop_map(|s| {
            Value::String(
                jiff::Timestamp::from_second(s)
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            )
        }),
        Just(Value::String("9999-12-31T23:59:59.999999999Z".into())),
        Just(Value::String("0001-01-01T00:00:00Z".into())),
        Just(Value::String("2024-13-45T99:99:99Z".into())),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|v| json!(v)),
    ]
}

fn record_object() -> impl Strategy<Value = Map<String, Value>> {
    let keys = [
        "holderIdentity",
        "leaseDurationSeconds",
        "acquireTime",
        "renewTime",
        "leaderTransitions",
        "other",
    ];
    prop::collection::vec((prop::sample::select(keys.to_vec()), json_value()), 0..8)
        .prop_map(|kvs| kvs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = LeaderRecord::from_json(&bytes);
    }

    #[test]
    fn arbitrary_objects_decode_or_fail_cleanly_and_round_trip(obj in record_object()) {
        let bytes = serde_json::to_vec(&obj).unwrap();
        if let Ok(r) = LeaderRecord::from_json(&bytes) {
            let back = LeaderRecord::from_json(&r.to_json(true)).expect("what we encode we decode");
            prop_assert_eq!(&back, &r);
            // Hostile numbers have defined meanings.
            prop_assert!(r.lease_duration() >= Duration::from_secs(1));
            let _ = r.fencing_token();
        }
    }
}

#[test]
fn identities_with_control_characters_or_a_megabyte_long_round_trip() {
    for id in [
        "a\u{0}b\u{7}\n\r\t\u{1b}[31m",
        &"x".repeat(1 << 20),
        "ünïcödé 🦀",
    ] {
        let r = LeaderRecord::new(id.to_owned(), 15);
        assert_eq!(LeaderRecord::from_json(&r.to_json(false)).unwrap(), r);
    }
}

#[test]
fn wrong_types_name_nothing_silently() {
    for bad in [
        r#"{"leaseDurationSeconds":"15"}"#,
        r#"{"leaderTransitions":1.5}"#,
        r#"{"holderIdentity":7}"#,
        r#"{"leaseDurationSeconds":4294967296}"#,
        "null",
        "[]",
        "\"x\"",
    ] {
        assert!(
            LeaderRecord::from_json(bad.as_bytes()).is_err(),
            "{bad} must not decode"
        );
    }
}

// === The machine under arbitrary event sequences ===

#[derive(Clone, Debug)]
enum Ev {
    Read(Option<(String, i32, i32, u8)>),
    ReadFail,
    Watch(Option<(String, i32, i32, u8)>),
    WriteOk(u8),
    WriteConflict,
    WriteFail,
    Timer,
    Cancel,
    WatchLost,
    Unreadable(u8, bool),
}

fn ev() -> impl Strategy<Value = Ev> {
    let rec = prop::option::of((
        prop::sample::select(vec!["", "me", "x", "y"]).prop_map(str::to_owned),
        -3i32..40,
        -2i32..5,
        any::<u8>(),
    ));
    prop_oneof![
        rec.clone().prop_map(Ev::Read),
        Just(Ev::ReadFail),
        rec.prop_map(Ev::Watch),
        any::<u8>().prop_map(Ev::WriteOk),
        Just(Ev::WriteConflict),
        Just(Ev::WriteFail),
        Just(Ev::Timer),
        Just(Ev::Timer),
        Just(Ev::Cancel),
        Just(Ev::WatchLost),
        (any::<u8>(), any::<bool>()).prop_map(|(v, r)| Ev::Unreadable(v, r)),
    ]
}

fn versioned(r: Option<(String, i32, i32, u8)>) -> Option<Versioned> {
    r.map(|(holder, transitions, secs, v)| {
        Versioned::new(
            LeaderRecord::new(holder, secs)
                .with_acquire_time(None)
                .with_renew_time(jiff::Timestamp::from_second(i64::from(v)).ok())
                .with_leader_transitions(transitions),
            Version::new(v.to_string()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Whatever the store and the clock do: no panic, leadership callbacks alternate, at most
    /// one request in flight, the step-down happens by the renew deadline, and the machine
    /// always has a next deadline or a request in flight (never stalls). The status a driver
    /// keeps up to date in place always equals a fresh one, and reports a change exactly when
    /// it differs from the last.
    #[test]
    fn the_machine_keeps_its_invariants(events in prop::collection::vec((ev(), 0u64..4000), 1..120)) {
        let timing = Timing::default();
        let mut m = Machine::new("me", timing.clone(), 42).unwrap();
        let wall = jiff::Timestamp::from_second(1_900_000_000).unwrap();
        let mut now = Duration::ZERO;
        let mut leading = false;
        // What the machine has in flight: Some(true) a read, Some(false) a write.
        let mut inflight: Option<bool> = None;
        let mut finished = false;
        let mut last_started = None;
        let mut published = leasehold_core::Status::default();
        let apply = |m: &mut Machine, e: Event, now: Duration| -> Vec<Action> { m.handle(e, now, wall) };
        let mut actions = apply(&mut m, Event::Start, now);
        for (e, dt) in events {
            for a in &actions {
                match a {
                    Action::Read { deadline } | Action::Create { deadline, .. } | Action::Update { deadline, .. } => {
                        prop_assert!(inflight.is_none(), "two requests in flight: {actions:?}");
                        prop_assert!(*deadline >= now, "deadline in the past");
                        inflight = Some(matches!(a, Action::Read { .. }));
                    }
                    Action::Abandon => inflight = None,
                    Action::StartedLeading { token } => {
                        prop_assert!(!leading, "started twice");
                        leading = true;
                        last_started = Some((*token, now));
                    }
                    Action::StoppedLeading { .. } => {
                        prop_assert!(leading, "stopped without starting");
                        leading = false;
                    }
                    Action::Finished => finished = true,
                    _ => {}
                }
            }
            prop_assert_eq!(leading, m.is_leader());
            let before = published.clone();
            let changed = m.update_status(&mut published);
            prop_assert_eq!(&published, &m.status());
            prop_assert_eq!(changed, published != before, "change reported wrongly");
            if finished {
                break;
            }
            prop_assert!(inflight.is_some() || m.deadline().is_some(), "stalled: nothing in flight and no deadline");
            if let (true, Some(until)) = (leading, m.leading_until()) {
                prop_assert!(until <= now + timing.renew_deadline, "leading_until beyond the renew deadline");
            }
            now += Duration::from_millis(dt);
            let event = match e {
                Ev::Read(r) if inflight == Some(true) => { inflight = None; Event::ReadDone(Ok(versioned(r))) }
                Ev::ReadFail if inflight == Some(true) => { inflight = None; Event::ReadDone(Err(ErrorKind::Failed)) }
                Ev::WriteOk(v) if inflight == Some(false) => { inflight = None; Event::WriteDone(Ok(Version::new(format!("w{v}")))) }
                Ev::WriteConflict if inflight == Some(false) => { inflight = None; Event::WriteDone(Err(ErrorKind::Conflict)) }
                Ev::WriteFail if inflight == Some(false) => { inflight = None; Event::WriteDone(Err(ErrorKind::Timeout)) }
                Ev::Watch(r) => Event::Watched(versioned(r)),
                Ev::Cancel => Event::Cancel,
                Ev::WatchLost => Event::WatchLost,
                Ev::Unreadable(v, true) if inflight == Some(true) => { inflight = None; Event::Unreadable { version: Version::new(v.to_string()), from_read: true } }
                Ev::Unreadable(v, false) => Event::Unreadable { version: Version::new(v.to_string()), from_read: false },
                _ => {
                    // The driver only delivers the timer at the deadline.
                    if let Some(d) = m.deadline() { now = now.max(d); }
                    Event::Timer
                }
            };
            actions = apply(&mut m, event, now);
        }
        let _ = last_started;
    }
}
