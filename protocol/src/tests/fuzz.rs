//! The decoder against arbitrary input: it may refuse, never panic.
use crate::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for phase in Phase::ALL {
            let _ = decode_request(&bytes, phase);
        }
        let _ = peek_request_id(&bytes);
        let _ = decode_reply(&bytes);
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_request(&sample());
        for (index, value) in flips {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        let _ = decode_request(&bytes, Phase::RequestFilter);
    }
}

fn sample() -> PhaseRequest {
    super::sample()
}
