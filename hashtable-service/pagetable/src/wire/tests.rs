use super::*;
use proptest::prelude::*;

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        any::<u64>().prop_map(|offset| Frame::LocalPool { offset }),
        any::<u64>().prop_map(|gfn| Frame::XenGfn { gfn }),
        (any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(issuer, grantee, gref)| {
            Frame::XenGrant {
                issuer,
                grantee,
                gref,
            }
        }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let reg = (
        any::<u32>(),
        any::<u32>(),
        frame(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(
            |(space_id, page_no, frame, lsn, valid_from, page_size)| WireRegistration {
                space_id,
                page_no,
                frame,
                lsn,
                valid_from,
                page_size,
            },
        );
    prop_oneof![
        Just(Request::Hello),
        (any::<u32>(), prop::collection::vec(reg, 0..50)).prop_map(|(f, items)| {
            Request::Register {
                family: FamilyId(f),
                items,
            }
        }),
        (
            any::<u32>(),
            any::<u64>(),
            prop::collection::vec((any::<u32>(), any::<u32>()), 0..50)
        )
            .prop_map(|(f, max_lsn, pages)| Request::Lookup {
                family: FamilyId(f),
                max_lsn,
                pages
            }),
        prop::collection::vec(frame(), 0..50).prop_map(|frames| Request::Invalidate { frames }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let entry = (
        any::<u32>(),
        frame(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(o, frame, lsn, valid_from, page_size)| Entry {
            owner: DomainId(o),
            frame,
            lsn,
            valid_from,
            page_size,
        });
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(d, f)| Reply::Hello {
            domain: DomainId(d),
            family: FamilyId(f)
        }),
        any::<u32>().prop_map(|count| Reply::Registered { count }),
        any::<u32>().prop_map(|count| Reply::Invalidated { count }),
        prop::collection::vec(prop::option::of(entry), 0..50).prop_map(Reply::Found),
        (1u16..20, "[a-zé ]{0,40}").prop_map(|(c, m)| Reply::Error(RemoteError {
            code: ErrorCode::from_u16(c),
            message: m
        })),
    ]
}

/// What the fuzz target checks: no panic, and whatever decodes re-encodes to the
/// same bytes (one encoding per message, so nothing is silently reinterpreted).
fn check_canonical(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut again = Vec::new();
    if let Ok(m) = decode_request(bytes) {
        encode_request(&m, &mut again);
        prop_assert_eq!(&again[4..], bytes);
    }
    if let Ok(m) = decode_reply(bytes) {
        encode_reply(&m, &mut again);
        prop_assert_eq!(&again[4..], bytes);
    }
    Ok(())
}

proptest! {
    #[test]
    fn requests_round_trip(id in any::<u32>(), request in request()) {
        let msg = RequestMsg { id, request };
        let mut b = Vec::new();
        encode_request(&msg, &mut b);
        let mut body = Vec::new();
        read_message(&mut &b[..], &mut body).unwrap();
        prop_assert_eq!(decode_request(&body).unwrap(), msg);
    }

    #[test]
    fn replies_round_trip(id in any::<u32>(), generation in any::<u64>(), reply in reply()) {
        let msg = ReplyMsg { id, generation, reply };
        let mut b = Vec::new();
        encode_reply(&msg, &mut b);
        prop_assert_eq!(decode_reply(&b[4..]).unwrap(), msg);
    }

    /// Every strict prefix of a valid body is an error, never a panic or a success.
    #[test]
    fn truncated_requests_are_errors(request in request(), cut in any::<prop::sample::Index>()) {
        let mut b = Vec::new();
        encode_request(&RequestMsg { id: 7, request }, &mut b);
        let body = &b[4..];
        let cut = cut.index(body.len());
        prop_assert!(decode_request(&body[..cut]).is_err());
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_canonical(&bytes)?;
        let mut buf = Vec::new();
        let _ = read_message(&mut &bytes[..], &mut buf);
    }

    /// Random bytes behind a valid header reach the kind-specific decoders.
    #[test]
    fn random_bodies_never_panic(kind in prop::sample::select(vec![1u8, 2, 3, 4, 0x81, 0x82, 0x83, 0x84, 0xff, 0x42]), tail in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut b = vec![VERSION, kind, 1, 0, 0, 0];
        b.extend_from_slice(&tail);
        check_canonical(&b)?;
        // The same with a valid reply header (generation) in front of the tail.
        b.splice(6..6, [0u8; 8]);
        check_canonical(&b)?;
    }
}

#[test]
fn lying_batch_count_is_rejected_before_allocating() {
    // Lookup claiming 4096 keys but carrying none.
    let mut b = vec![VERSION, K_LOOKUP, 0, 0, 0, 0];
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&4096u16.to_le_bytes());
    assert!(matches!(
        decode_request(&b),
        Err(DecodeError::Truncated { .. })
    ));
    let n = (MAX_BATCH + 1) as u16;
    let len = b.len();
    b[len - 2..].copy_from_slice(&n.to_le_bytes());
    assert_eq!(
        decode_request(&b),
        Err(DecodeError::BatchTooLarge(MAX_BATCH + 1))
    );
}

#[test]
fn framing_rejects_zero_and_oversized_lengths_without_reading_the_body() {
    let mut buf = Vec::new();
    let zero = 0u32.to_le_bytes();
    assert!(matches!(
        read_message(&mut &zero[..], &mut buf),
        Err(ReadError::Bad(DecodeError::Empty))
    ));
    let big = ((MAX_MESSAGE + 1) as u32).to_le_bytes();
    assert!(matches!(
        read_message(&mut &big[..], &mut buf),
        Err(ReadError::Bad(DecodeError::TooLarge(_)))
    ));
    assert!(matches!(
        read_message(&mut &[][..], &mut buf),
        Err(ReadError::Closed)
    ));
    assert!(matches!(
        read_message(&mut &[5, 0][..], &mut buf),
        Err(ReadError::Bad(DecodeError::Truncated { at: 2, need: 2 }))
    ));
    let short_body = [10u8, 0, 0, 0, 1, 2];
    assert!(matches!(
        read_message(&mut &short_body[..], &mut buf),
        Err(ReadError::Bad(DecodeError::Truncated { at: 6, need: 8 }))
    ));
}

#[test]
fn wrong_version_kind_and_trailing_bytes_are_named() {
    assert_eq!(
        decode_request(&[9, K_HELLO, 0, 0, 0, 0]),
        Err(DecodeError::Version(9))
    );
    assert_eq!(
        decode_request(&[VERSION, 0x42, 0, 0, 0, 0]),
        Err(DecodeError::Kind(0x42))
    );
    assert_eq!(
        decode_request(&[VERSION, K_HELLO, 0, 0, 0, 0, 1]),
        Err(DecodeError::Trailing(1))
    );
    assert_eq!(decode_request(&[]), Err(DecodeError::Empty));
}

#[test]
fn long_error_messages_are_cut_at_a_char_boundary() {
    let msg = ReplyMsg {
        id: 1,
        generation: 2,
        reply: Reply::Error(RemoteError {
            code: ErrorCode::Internal,
            message: "é".repeat(700),
        }),
    };
    let mut b = Vec::new();
    encode_reply(&msg, &mut b);
    match decode_reply(&b[4..]).unwrap().reply {
        Reply::Error(e) => assert_eq!(e.message, "é".repeat(512)),
        other => panic!("unexpected {other:?}"),
    }
}
