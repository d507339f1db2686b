//! Hostile and nonsensical input is refused with typed errors and changes
//! nothing: oversized lists and manifests, wrong migration id or generation,
//! forged hashes, messages out of order or in the wrong direction.

use migrate::*;
use store::{BlobRef, ChunkId, ChunkMap, Manifest, MAX_CHUNK_SIZE, MAX_JOB_ID_LEN};

const MIG: MigrationId = MigrationId(42);
const GEN: u64 = 3;
const CS: u32 = 64 * 1024;

fn id(s: &str) -> ChunkId {
    ChunkId::of(s.as_bytes())
}

fn state() -> StateMap {
    StateMap {
        module: BlobRef {
            hash: id("module"),
            map: ChunkMap {
                len: 1000,
                chunk_size: CS,
                chunks: vec![(0, id("module 0"))],
            },
        },
        memory: ChunkMap {
            len: 4 * CS as u64,
            chunk_size: CS,
            chunks: (0..4).map(|i| (i, id(&format!("mem {i}")))).collect(),
        },
        extra: Vec::new(),
    }
}

/// A real manifest of `st` (what a source's store would hold at the pause).
fn manifest_of(st: &StateMap) -> Manifest {
    Manifest {
        version: store::MANIFEST_VERSION,
        job: "job".into(),
        generation: GEN,
        module: st.module.clone(),
        memory: st.memory.clone(),
        globals: Default::default(),
        host_state: Default::default(),
        extra: Default::default(),
        parent: None,
    }
}

/// A well-formed Final of `state()` after `after_round` rounds (the manifest as a
/// patch of the offer, which is `state()` too).
fn final_body(after_round: u32) -> Body {
    let m = manifest_of(&state());
    Body::Final {
        after_round,
        chunks: vec![],
        compression: Compression::None,
        manifest: ManifestPatch::between(&state().memory, &m),
        manifest_id: ChunkId::of(&m.encode()),
        postcopy: None,
    }
}

fn msg(body: Body) -> Message {
    Message {
        migration: MIG,
        generation: GEN,
        body,
    }
}

fn cfg() -> SourceConfig {
    SourceConfig {
        compression_cores: 0.0,
        ..SourceConfig::default()
    }
}

/// A source that has sent its Offer (returned).
fn source() -> (Source, Message) {
    let mut s = Source::new(cfg(), MIG, "job".into(), GEN, state(), 0).unwrap();
    let Some(SourceAction::Send(offer)) = s.poll_action() else {
        panic!("no offer");
    };
    assert_eq!(s.poll_action(), None);
    (s, offer)
}

fn offer() -> Message {
    source().1
}

fn destination() -> Destination {
    let mut d = Destination::accept(DestConfig::default(), 0, &offer(), None, |_| false).unwrap();
    while d.poll_action().is_some() {}
    d
}

fn drain_d(d: &mut Destination) -> Vec<DestAction> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn drain_s(s: &mut Source) -> Vec<SourceAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn refs(n: usize) -> Vec<ChunkRef> {
    (0..n)
        .map(|i| ChunkRef {
            id: id(&format!("r{i}")),
            len: CS,
        })
        .collect()
}

/// Assert `r` is an error and the source neither moved nor acted.
fn refused_s(s: &mut Source, m: Message) -> MigrateError {
    let before = s.phase();
    let e = s.handle_message(1, m).expect_err("accepted");
    assert_eq!(s.phase(), before);
    assert_eq!(drain_s(s), vec![]);
    e
}

fn refused_d(d: &mut Destination, m: Message) -> MigrateError {
    let before = d.phase();
    let deadline = d.poll_timeout();
    let e = d.handle_message(1, m).expect_err("accepted");
    assert_eq!(d.phase(), before);
    assert_eq!(d.poll_timeout(), deadline);
    assert_eq!(drain_d(d), vec![]);
    e
}

#[test]
fn huge_lists_are_refused() {
    let (mut s, _) = source();
    let too_many = vec![id("x"); MAX_STATE_CHUNKS + 1];
    let e = refused_s(
        &mut s,
        msg(Body::Have {
            have: too_many,
            lazy: true,
        }),
    );
    assert!(
        matches!(e, MigrateError::Invalid(MessageError::TooMany { what: "have list", len, .. }) if len == MAX_STATE_CHUNKS as u64 + 1),
        "{e}"
    );

    let mut d = destination();
    let e = refused_d(
        &mut d,
        msg(Body::Round {
            round: 1,
            chunks: refs(MAX_STATE_CHUNKS + 1),
            compression: Compression::None,
        }),
    );
    assert!(
        matches!(e, MigrateError::Invalid(MessageError::TooMany { .. })),
        "{e}"
    );

    // An offer listing more chunks than any state may have.
    let mut big = state();
    big.memory = ChunkMap {
        len: (MAX_STATE_CHUNKS as u64 + 1) * 4096,
        chunk_size: 4096,
        chunks: (0..=MAX_STATE_CHUNKS as u64)
            .map(|i| (i, id("z")))
            .collect(),
    };
    let m = msg(Body::Offer(Box::new(Offer {
        job: "job".into(),
        state: big.clone(),
    })));
    let e = Destination::accept(DestConfig::default(), 0, &m, None, |_| false).unwrap_err();
    assert!(
        matches!(
            e,
            MigrateError::Invalid(MessageError::TooMany {
                what: "state chunks",
                ..
            })
        ),
        "{e}"
    );
    // The source refuses to even offer it.
    let e = Source::new(cfg(), MIG, "job".into(), GEN, big, 0).unwrap_err();
    assert!(
        matches!(e, MigrateError::Invalid(MessageError::TooMany { .. })),
        "{e}"
    );

    let mut many_blobs = state();
    many_blobs.extra = vec![state().module; MAX_EXTRA_BLOBS + 1];
    let m = msg(Body::Offer(Box::new(Offer {
        job: "job".into(),
        state: many_blobs,
    })));
    assert!(matches!(
        Destination::accept(DestConfig::default(), 0, &m, None, |_| false),
        Err(MigrateError::Invalid(MessageError::TooMany {
            what: "extra blobs",
            ..
        }))
    ));
}

#[test]
fn oversized_or_forged_manifests_are_refused() {
    let mut d = destination();
    let patch = |head: Vec<u8>, zeroed: Vec<u64>| Body::Final {
        after_round: 0,
        chunks: vec![],
        compression: Compression::None,
        manifest_id: ChunkId::of(&head),
        manifest: ManifestPatch { head, zeroed },
        postcopy: None,
    };
    let e = refused_d(
        &mut d,
        msg(patch(vec![7u8; MAX_MANIFEST_BYTES + 1], vec![])),
    );
    assert!(
        matches!(
            e,
            MigrateError::Invalid(MessageError::TooLarge {
                what: "final manifest",
                ..
            })
        ),
        "{e}"
    );
    let e = refused_d(&mut d, msg(patch(vec![], vec![])));
    assert!(
        matches!(e, MigrateError::Invalid(MessageError::Malformed { .. })),
        "{e}"
    );
    let e = refused_d(&mut d, msg(patch(vec![1], vec![0; MAX_STATE_CHUNKS + 1])));
    assert!(
        matches!(
            e,
            MigrateError::Invalid(MessageError::TooMany {
                what: "zeroed slots",
                ..
            })
        ),
        "{e}"
    );
    let Body::Final { manifest, .. } = final_body(0) else {
        unreachable!()
    };
    let e = refused_d(
        &mut d,
        msg(Body::Final {
            after_round: 0,
            chunks: vec![],
            compression: Compression::None,
            manifest: manifest.clone(),
            manifest_id: ChunkId::of(&manifest.head),
            postcopy: Some(Deferral {
                hot: vec![0; MAX_STATE_CHUNKS + 1],
            }),
        }),
    );
    assert!(
        matches!(
            e,
            MigrateError::Invalid(MessageError::TooMany {
                what: "hot slots",
                ..
            })
        ),
        "{e}"
    );
}

/// A patch whose rebuilt manifest does not hash to the claimed id, or that names
/// slots the offer does not have, is refused and ends the move (an Abort the
/// source can resume on): nothing can be restored from it.
#[test]
fn a_forged_manifest_patch_aborts_the_move() {
    type Forgery = Box<dyn Fn(&mut ManifestPatch, &mut ChunkId)>;
    let forged: Vec<(&str, Forgery)> = vec![
        (
            "another id",
            Box::new(|_, id| *id = ChunkId::of(b"another")),
        ),
        ("zeroed twice", Box::new(|p, _| p.zeroed = vec![1, 1])),
        ("zeroed unknown", Box::new(|p, _| p.zeroed = vec![9])),
        ("garbage head", Box::new(|p, _| p.head = vec![0xff, 0x00])),
        // A slot zeroed that the manifest still lists: the hash no longer holds.
        ("dropped slot", Box::new(|p, _| p.zeroed = vec![2])),
    ];
    for (what, forge) in forged {
        let mut d = destination();
        let Body::Final {
            mut manifest,
            mut manifest_id,
            ..
        } = final_body(0)
        else {
            unreachable!()
        };
        forge(&mut manifest, &mut manifest_id);
        let r = d.handle_message(
            1,
            msg(Body::Final {
                after_round: 0,
                chunks: vec![],
                compression: Compression::None,
                manifest,
                manifest_id,
                postcopy: None,
            }),
        );
        assert!(r.is_err(), "{what}: accepted");
        assert_eq!(d.phase(), DestPhase::Aborted, "{what}");
        let acts = drain_d(&mut d);
        assert!(
            acts.iter().any(|a| matches!(
                a,
                DestAction::Send(Message {
                    body: Body::Abort {
                        reason: AbortReason::VerificationFailed
                    },
                    ..
                })
            )),
            "{what}: {acts:?}"
        );
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, DestAction::VerifyAndRestore { .. })),
            "{what}: {acts:?}"
        );
    }
}

/// The patch rebuilds exactly the source's manifest, whatever changed: slots
/// rewritten, slots zeroed, slots added past the old end, memory grown.
#[test]
fn a_manifest_patch_rebuilds_the_manifest() {
    let base = state();
    let mut next = manifest_of(&base);
    next.memory.len = 8 * CS as u64;
    next.memory.chunks = vec![
        (0, id("mem 0")),
        (1, id("mem 1 rewritten")),
        (3, id("mem 3")),
        (6, id("mem 6 new")),
    ];
    next.globals = serde_bytes::ByteBuf::from(vec![1, 2, 3]);
    let patch = ManifestPatch::between(&base.memory, &next);
    assert_eq!(patch.zeroed, vec![2]);
    let bytes = next.encode();
    let (rebuilt, enc) = patch
        .apply(&base.memory, &ChunkId::of(&bytes))
        .expect("applies");
    assert_eq!(rebuilt, next);
    assert_eq!(enc, bytes);
    // Only the changed entries travel.
    let head = Manifest::decode(&patch.head).unwrap();
    assert_eq!(head.memory.chunks.len(), 2);
    // Against another base it does not hash to the same id.
    let mut other = base.memory.clone();
    other.chunks[0].1 = id("something else");
    assert!(patch.apply(&other, &ChunkId::of(&bytes)).is_err());
}

#[test]
fn wrong_migration_or_generation_is_refused() {
    let (mut s, _) = source();
    let mut d = destination();
    for (m, g) in [(MigrationId(43), GEN), (MIG, GEN + 1), (MIG, GEN - 1)] {
        let have = Message {
            migration: m,
            generation: g,
            body: Body::Have {
                have: vec![],
                lazy: true,
            },
        };
        let round = Message {
            migration: m,
            generation: g,
            body: Body::Round {
                round: 1,
                chunks: refs(2),
                compression: Compression::None,
            },
        };
        let es = refused_s(&mut s, have);
        let ed = refused_d(&mut d, round);
        if m != MIG {
            assert_eq!(
                es,
                MigrateError::WrongMigration {
                    expected: MIG,
                    found: m
                }
            );
            assert_eq!(
                ed,
                MigrateError::WrongMigration {
                    expected: MIG,
                    found: m
                }
            );
        } else {
            assert_eq!(
                es,
                MigrateError::WrongGeneration {
                    expected: GEN,
                    found: g
                }
            );
            assert_eq!(
                ed,
                MigrateError::WrongGeneration {
                    expected: GEN,
                    found: g
                }
            );
        }
    }
    // An offer whose generation cannot go up is refused.
    let mut o = offer();
    o.generation = u64::MAX;
    assert!(matches!(
        Destination::accept(DestConfig::default(), 0, &o, None, |_| false),
        Err(MigrateError::Invalid(MessageError::Malformed {
            what: "offer",
            ..
        }))
    ));
    // A Go for the wrong generation never starts anything, even when Ready.
    let mut d = ready_destination();
    let e = refused_d(
        &mut d,
        Message {
            migration: MIG,
            generation: GEN + 1,
            body: Body::Go,
        },
    );
    assert!(matches!(e, MigrateError::WrongGeneration { .. }));
}

#[test]
fn malformed_fields_are_refused() {
    let mut d = destination();
    let bad_rounds = [
        Body::Round {
            round: 1,
            chunks: vec![ChunkRef {
                id: id("a"),
                len: 0,
            }],
            compression: Compression::None,
        },
        Body::Round {
            round: 1,
            chunks: vec![ChunkRef {
                id: id("a"),
                len: MAX_CHUNK_SIZE + 1,
            }],
            compression: Compression::None,
        },
        Body::Round {
            round: 0,
            chunks: vec![],
            compression: Compression::None,
        },
        Body::Round {
            round: MAX_ROUNDS + 1,
            chunks: vec![],
            compression: Compression::None,
        },
        Body::Round {
            round: 1,
            chunks: vec![],
            compression: Compression::Zstd(MAX_ZSTD_LEVEL + 1),
        },
        Body::Round {
            round: 1,
            chunks: vec![],
            compression: Compression::Zstd(0),
        },
    ];
    for b in bad_rounds {
        let e = refused_d(&mut d, msg(b.clone()));
        assert!(
            matches!(e, MigrateError::Invalid(MessageError::Malformed { .. })),
            "{b:?}: {e}"
        );
    }
    // Offers with a bad job id or a corrupt chunk map.
    let mut unsorted = state();
    unsorted.memory.chunks.swap(0, 1);
    let mut out_of_range = state();
    out_of_range.memory.chunks.push((99, id("far")));
    let mut bad_chunk_size = state();
    bad_chunk_size.memory.chunk_size = 3;
    for (job, st) in [
        (String::new(), state()),
        ("j".repeat(MAX_JOB_ID_LEN + 1), state()),
        ("job".into(), unsorted),
        ("job".into(), out_of_range),
        ("job".into(), bad_chunk_size),
    ] {
        let m = msg(Body::Offer(Box::new(Offer { job, state: st })));
        let e = Destination::accept(DestConfig::default(), 0, &m, None, |_| false).unwrap_err();
        assert!(
            matches!(e, MigrateError::Invalid(MessageError::Malformed { .. })),
            "{e}"
        );
    }
}

#[test]
fn a_have_may_only_name_offered_chunks() {
    let (mut s, _) = source();
    let e = refused_s(
        &mut s,
        msg(Body::Have {
            have: vec![id("mem 0"), id("never offered")],
            lazy: true,
        }),
    );
    assert_eq!(e, MigrateError::NotOffered(id("never offered")));
    // The genuine answer is still accepted afterwards.
    s.handle_message(
        2,
        msg(Body::Have {
            have: vec![id("mem 0")],
            lazy: true,
        }),
    )
    .unwrap();
    assert_eq!(s.phase(), SourcePhase::PreCopy { round: 1 });
    let Some(SourceAction::Send(Message {
        body: Body::Round { chunks, .. },
        ..
    })) = s.poll_action()
    else {
        panic!("no round");
    };
    // Everything offered but what the destination has (module + 3 memory).
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|c| c.id != id("mem 0")));
}

#[test]
fn rounds_out_of_order_are_refused() {
    let mut d = destination();
    let e = refused_d(
        &mut d,
        msg(Body::Round {
            round: 2,
            chunks: vec![],
            compression: Compression::None,
        }),
    );
    assert_eq!(
        e,
        MigrateError::WrongRound {
            expected: 1,
            found: 2
        }
    );
    let Body::Final {
        manifest,
        manifest_id,
        ..
    } = final_body(3)
    else {
        unreachable!()
    };
    let e = refused_d(
        &mut d,
        msg(Body::Final {
            after_round: 3,
            chunks: vec![],
            compression: Compression::None,
            manifest_id,
            manifest,
            postcopy: None,
        }),
    );
    assert_eq!(
        e,
        MigrateError::WrongRound {
            expected: 0,
            found: 3
        }
    );

    let (mut s, _) = source();
    s.handle_message(
        1,
        msg(Body::Have {
            have: vec![],
            lazy: true,
        }),
    )
    .unwrap();
    drain_s(&mut s);
    let e = refused_s(&mut s, msg(Body::RoundAck { round: 5 }));
    assert_eq!(
        e,
        MigrateError::WrongRound {
            expected: 1,
            found: 5
        }
    );
}

#[test]
fn messages_in_the_wrong_direction_are_refused() {
    let (mut s, offer) = source();
    let e = refused_s(&mut s, offer.clone());
    assert!(matches!(e, MigrateError::WrongDirection { .. }));
    let e = refused_s(&mut s, msg(Body::Go));
    assert!(matches!(e, MigrateError::WrongDirection { .. }));
    let mut d = destination();
    for b in [
        Body::Ready,
        Body::GoAck { held_ms: 0 },
        Body::Have {
            have: vec![],
            lazy: true,
        },
        Body::RoundAck { round: 1 },
    ] {
        let e = refused_d(&mut d, msg(b));
        assert!(matches!(e, MigrateError::WrongDirection { .. }), "{e}");
    }
    // accept() takes only an Offer.
    assert!(Destination::accept(DestConfig::default(), 0, &msg(Body::Go), None, |_| true).is_err());
}

/// A destination driven to Ready (restored, paused, waiting for Go).
fn ready_destination() -> Destination {
    let mut d = destination();
    d.handle_message(
        1,
        msg(Body::Round {
            round: 1,
            chunks: refs(2),
            compression: Compression::None,
        }),
    )
    .unwrap();
    d.handle_event(2, DestEvent::Fetched { round: 1 }).unwrap();
    d.handle_message(3, msg(final_body(1))).unwrap();
    d.handle_event(4, DestEvent::Restored).unwrap();
    assert_eq!(d.phase(), DestPhase::Ready);
    drain_d(&mut d);
    d
}

#[test]
fn go_before_ready_never_starts_the_job() {
    let mut d = destination();
    let e = refused_d(&mut d, msg(Body::Go));
    assert!(
        matches!(e, MigrateError::Unexpected { what: "Go", .. }),
        "{e}"
    );
    d.handle_message(
        1,
        msg(Body::Round {
            round: 1,
            chunks: refs(2),
            compression: Compression::None,
        }),
    )
    .unwrap();
    drain_d(&mut d);
    let e = refused_d(&mut d, msg(Body::Go));
    assert!(matches!(e, MigrateError::Unexpected { .. }), "{e}");
    assert_eq!(d.phase(), DestPhase::Fetching { round: 1 });
}

#[test]
fn goack_before_go_never_drops_the_job() {
    let (mut s, _) = source();
    let e = refused_s(&mut s, msg(Body::GoAck { held_ms: 0 }));
    assert!(
        matches!(e, MigrateError::Unexpected { what: "GoAck", .. }),
        "{e}"
    );
    s.handle_message(
        1,
        msg(Body::Have {
            have: vec![],
            lazy: true,
        }),
    )
    .unwrap();
    drain_s(&mut s);
    let e = refused_s(&mut s, msg(Body::GoAck { held_ms: 0 }));
    assert!(matches!(e, MigrateError::Unexpected { .. }), "{e}");
    // Ready before anything was paused is nonsense too.
    let e = refused_s(&mut s, msg(Body::Ready));
    assert!(
        matches!(e, MigrateError::Unexpected { what: "Ready", .. }),
        "{e}"
    );
}

#[test]
fn a_running_destination_refuses_abort_and_cancel() {
    let mut d = ready_destination();
    d.handle_message(5, msg(Body::Go)).unwrap();
    let a = drain_d(&mut d);
    assert!(a
        .iter()
        .any(|a| matches!(a, DestAction::ResumeJob { generation, .. } if *generation == GEN + 1)));
    assert_eq!(d.phase(), DestPhase::Running);
    let e = refused_d(
        &mut d,
        msg(Body::Abort {
            reason: AbortReason::Timeout,
        }),
    );
    assert!(matches!(e, MigrateError::Unexpected { what: "Abort", .. }));
    assert_eq!(
        d.handle_event(6, DestEvent::Cancel),
        Err(MigrateError::TooLateToCancel)
    );
    assert_eq!(d.phase(), DestPhase::Running);
    // A duplicate Go is answered, never starts a second copy.
    d.handle_message(7, msg(Body::Go)).unwrap();
    assert_eq!(
        drain_d(&mut d),
        vec![DestAction::Send(msg(Body::GoAck { held_ms: 0 }))]
    );
}

#[test]
fn a_destination_running_a_newer_generation_is_fenced() {
    let o = offer();
    let e =
        Destination::accept(DestConfig::default(), 0, &o, Some(GEN + 1), |_| false).unwrap_err();
    assert_eq!(
        e,
        MigrateError::Fenced {
            job: "job".into(),
            local: GEN + 1,
            offered: GEN
        }
    );
    // Holding the same generation (a replica of its checkpoints) is fine.
    assert!(Destination::accept(DestConfig::default(), 0, &o, Some(GEN), |_| false).is_ok());
    assert_eq!(
        Destination::refusal(&o).body,
        Body::Abort {
            reason: AbortReason::Refused
        }
    );
}

#[test]
fn bad_source_configs_are_refused() {
    for f in [
        |c: &mut SourceConfig| c.precopy.max_rounds = MAX_ROUNDS + 1,
        |c: &mut SourceConfig| c.precopy.min_shrink_permille = 0,
        |c: &mut SourceConfig| c.retransmit_ms = 0,
        |c: &mut SourceConfig| c.reply_timeout_ms = 1,
        |c: &mut SourceConfig| c.compression_cores = f64::NAN,
        |c: &mut SourceConfig| c.link_bandwidth_bytes_per_s = 0,
    ] {
        let mut c = cfg();
        f(&mut c);
        assert!(matches!(
            Source::new(c, MIG, "job".into(), GEN, state(), 0),
            Err(MigrateError::Config(_))
        ));
    }
}

/// Every message survives CBOR (the mesh's encoding) unchanged, and byte
/// strings travel as byte strings.
#[test]
fn messages_round_trip_through_cbor() {
    let globals = vec![0xabu8; 10_000];
    let mut m = manifest_of(&state());
    m.globals = serde_bytes::ByteBuf::from(globals.clone());
    let bodies = vec![
        offer().body,
        Body::Have {
            have: vec![id("a"), id("b")],
            lazy: true,
        },
        Body::Round {
            round: 3,
            chunks: refs(3),
            compression: Compression::Zstd(19),
        },
        Body::RoundAck { round: 3 },
        Body::Final {
            after_round: 3,
            chunks: refs(1),
            compression: Compression::None,
            manifest_id: ChunkId::of(&m.encode()),
            manifest: ManifestPatch::between(&state().memory, &m),
            postcopy: Some(Deferral { hot: vec![3, 1] }),
        },
        Body::Ready,
        Body::Go,
        Body::GoAck { held_ms: 7 },
        Body::Abort {
            reason: AbortReason::VerificationFailed,
        },
    ];
    for b in bodies {
        let m = msg(b);
        let mut buf = Vec::new();
        ciborium::into_writer(&m, &mut buf).unwrap();
        let back: Message = ciborium::from_reader(&buf[..]).unwrap();
        assert_eq!(back, m);
        back.validate().unwrap();
        if matches!(m.body, Body::Final { .. }) {
            // 10 000 bytes as a byte string, not an array of integers, and no
            // memory entry (none changed since the offer).
            assert!(buf.len() < globals.len() + 600, "{} bytes", buf.len());
        }
    }
    // Garbage does not decode into a message.
    assert!(ciborium::from_reader::<Message, _>(&[0xff, 0x00, 0x13][..]).is_err());
}

/// After Go, only an Abort from a destination core proves the job was not
/// started there; a stateless refusal does not, and is refused.
#[test]
fn a_refusal_after_go_does_not_resume_the_source() {
    let (mut s, _) = source();
    s.handle_message(
        1,
        msg(Body::Have {
            have: vec![],
            lazy: true,
        }),
    )
    .unwrap();
    s.handle_message(2, msg(Body::RoundAck { round: 1 }))
        .unwrap();
    s.handle_event(
        3,
        SourceEvent::Checkpointed {
            round: 1,
            state: state(),
        },
    )
    .unwrap();
    let m = manifest_of(&state());
    s.handle_event(
        4,
        SourceEvent::Paused {
            manifest_id: ChunkId::of(&m.encode()),
            manifest: Box::new(m),
        },
    )
    .unwrap();
    s.handle_message(5, msg(Body::Ready)).unwrap();
    drain_s(&mut s);
    assert_eq!(s.phase(), SourcePhase::HandedOver);
    let e = refused_s(
        &mut s,
        msg(Body::Abort {
            reason: AbortReason::Refused,
        }),
    );
    assert!(matches!(e, MigrateError::Unexpected { .. }), "{e}");
    assert_eq!(
        s.handle_event(6, SourceEvent::Cancel),
        Err(MigrateError::TooLateToCancel)
    );
    assert_eq!(drain_s(&mut s), vec![]);
    // The destination core's own Abort is proof: resume.
    s.handle_message(
        7,
        msg(Body::Abort {
            reason: AbortReason::Timeout,
        }),
    )
    .unwrap();
    assert_eq!(drain_s(&mut s)[0], SourceAction::ResumeJob);
}
