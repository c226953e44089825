//! Which datagrams of a batch travel together: the pure part of Ballast's UDP batching. The
//! worker's shell (`worker::udp`) groups a receive batch by sender with [`by_sender`], and
//! `sys::DatagramBatch::send` cuts each group into runs of one size with [`run_of_one_size`],
//! each run leaving as one UDP_SEGMENT message. Neither makes a syscall or owns a descriptor,
//! so both are property-tested here without sockets.

/// Most datagrams [`by_sender`] considers together; a longer batch is grouped in slices of this
/// many, in order (a receive batch is `sys::MAX_BATCH` long, well under it).
pub const GROUP_WINDOW: usize = 64;

/// Calls `each` once per sender of a receive batch with the indices of that sender's datagrams
/// in arrival order; senders come in the order of their first datagram. A datagram without a
/// sender (`None`: no address, or cut short) goes alone.
///
/// Why: many clients share a listener (dnsperf's sockets, the players of one game server) and
/// interleave in a batch; grouping them keeps each client's order while its datagrams leave
/// in one sendmmsg call on its flow socket, a run of one size as one message, instead of one
/// call per datagram.
pub fn by_sender<K: PartialEq>(senders: &[Option<K>], mut each: impl FnMut(&[usize])) {
    for (window, chunk) in senders.chunks(GROUP_WINDOW).enumerate() {
        let base = window * GROUP_WINDOW;
        let mut taken = [false; GROUP_WINDOW];
        let mut group = [0usize; GROUP_WINDOW];
        for (i, sender) in chunk.iter().enumerate() {
            if taken[i] {
                continue;
            }
            group[0] = base + i;
            let mut len = 1;
            if let Some(sender) = sender {
                for (j, other) in chunk.iter().enumerate().skip(i + 1) {
                    if !taken[j] && other.as_ref() == Some(sender) {
                        taken[j] = true;
                        group[len] = base + j;
                        len += 1;
                    }
                }
            }
            each(&group[..len]);
        }
    }
}

/// Largest datagram sent coalesced: a segment must fit one packet of the path, and 1452
/// bytes fit one IPv6 packet (1500 − 40 − 8) on any Ethernet-sized MTU. Larger datagrams
/// leave one by one, as they came.
pub const COALESCE_MAX_SEGMENT: usize = 1452;
/// Most datagrams in one coalesced message (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const COALESCE_MAX_SEGMENTS: usize = 64;
/// Most bytes in one coalesced message: it is one IP packet until it is cut.
const COALESCE_MAX_BYTES: usize = 65_000;

/// How many of the datagrams `(length, is a UDP_GRO buffer)` at the front can leave as one
/// UDP_SEGMENT message whose segment size is the first one's length: the kernel cuts such a
/// message into pieces of that size with a shorter last one, so the run is the first
/// datagram's size repeated, optionally closed by one shorter (non-empty) datagram. Pure, so
/// the grouping is property-tested: cutting each run back gives the original datagrams.
pub fn run_of_one_size(mut datagrams: impl Iterator<Item = (usize, bool)>) -> usize {
    let Some((size, gro)) = datagrams.next() else {
        return 0;
    };
    if gro || size == 0 || size > COALESCE_MAX_SEGMENT {
        return 1;
    }
    let mut count = 1;
    let mut total = size;
    for (len, gro) in datagrams {
        if gro || len == 0 || len > size {
            break;
        }
        if count == COALESCE_MAX_SEGMENTS || total + len > COALESCE_MAX_BYTES {
            break;
        }
        count += 1;
        total += len;
        if len < size {
            break;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn groups(senders: &[Option<u8>]) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        by_sender(senders, |group| out.push(group.to_vec()));
        out
    }

    #[test]
    fn interleaved_clients_leave_in_their_own_order() {
        let (a, b, c) = (Some(1), Some(2), Some(3));
        assert_eq!(
            groups(&[a, b, a, None, c, b, None, a]),
            vec![vec![0, 2, 7], vec![1, 5], vec![3], vec![4], vec![6]]
        );
        assert!(groups(&[]).is_empty());
    }

    proptest! {
        /// Every datagram goes exactly once; a group is one sender's datagrams in arrival
        /// order; groups come in the order of their first datagram; a sender has one group
        /// per window; a datagram without a sender is alone.
        #[test]
        fn groups_partition_the_batch_by_sender(
            senders in proptest::collection::vec(proptest::option::weighted(0.9, 0u8..6), 0..150)
        ) {
            let groups = groups(&senders);
            let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..senders.len()).collect::<Vec<_>>());
            for group in &groups {
                prop_assert!(group.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(group.iter().all(|&i| i / GROUP_WINDOW == group[0] / GROUP_WINDOW));
                match senders[group[0]] {
                    None => prop_assert_eq!(group.len(), 1),
                    sender => prop_assert!(group.iter().all(|&i| senders[i] == sender)),
                }
            }
            prop_assert!(groups.windows(2).all(|w| w[0][0] < w[1][0]));
            for (k, g) in groups.iter().enumerate() {
                for h in &groups[k + 1..] {
                    let same_window = g[0] / GROUP_WINDOW == h[0] / GROUP_WINDOW;
                    prop_assert!(
                        !(same_window && senders[g[0]].is_some() && senders[g[0]] == senders[h[0]])
                    );
                }
            }
        }

        /// Cutting every coalesced run back into segments of its first datagram's size (the
        /// kernel's rule) gives exactly the datagrams that went in, in order.
        #[test]
        fn coalesced_runs_cut_back_into_the_same_datagrams(
            datagrams in proptest::collection::vec(
                (proptest::sample::select(vec![0usize, 1, 7, 64, 100, 1452, 1453, 9000]),
                 proptest::bool::weighted(0.05)),
                0..80,
            )
        ) {
            let mut rebuilt = Vec::new();
            let mut at = 0;
            while at < datagrams.len() {
                let count = run_of_one_size(datagrams[at..].iter().copied());
                prop_assert!(count >= 1 && at + count <= datagrams.len());
                let run = &datagrams[at..at + count];
                if count == 1 {
                    rebuilt.push(run[0]);
                } else {
                    let size = run[0].0;
                    prop_assert!(size > 0 && size <= COALESCE_MAX_SEGMENT);
                    prop_assert!(run.iter().all(|&(_, gro)| !gro));
                    prop_assert!(count <= COALESCE_MAX_SEGMENTS);
                    let mut total: usize = run.iter().map(|&(len, _)| len).sum();
                    prop_assert!(total <= COALESCE_MAX_BYTES);
                    while total > 0 {
                        rebuilt.push((size.min(total), false));
                        total -= size.min(total);
                    }
                }
                at += count;
            }
            prop_assert_eq!(rebuilt, datagrams);
        }
    }
}
