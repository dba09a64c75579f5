//! What a subscriber saw: per-publisher sequence tracking (lost, duplicated, out of order) and
//! the latency histogram. Pure bookkeeping, testable without a broker.

use hdrhistogram::Histogram;

/// Each payload starts with this header; the rest is padding up to the requested size.
pub const HEADER_BYTES: usize = 8 + 4 + 8;

/// Writes the header: send time (ns since the run's epoch), publisher index, sequence number.
pub fn stamp(buf: &mut [u8], sent_ns: u64, publisher: u32, sequence: u64) {
    buf[..8].copy_from_slice(&sent_ns.to_be_bytes());
    buf[8..12].copy_from_slice(&publisher.to_be_bytes());
    buf[12..20].copy_from_slice(&sequence.to_be_bytes());
}

pub fn read_stamp(payload: &[u8]) -> Option<(u64, u32, u64)> {
    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let publisher = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?);
    let sequence = u64::from_be_bytes(payload.get(12..20)?.try_into().ok()?);
    Some((sent, publisher, sequence))
}

/// Latencies in nanoseconds: 1 ns to 100 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// One subscriber's view of the run.
pub struct Tally {
    /// Highest sequence seen per publisher, +1 (0: none yet).
    next_expected: Vec<u64>,
    /// Every sequence seen per publisher, to tell duplicates from reordering.
    seen: Vec<roaring_like::Bits>,
    /// Messages sent before this instant (ns since the epoch) are the warm-up: checked for loss
    /// and order, left out of latency and throughput.
    measure_from_ns: u64,
    /// Distinct messages received, warm-up included.
    pub received: u64,
    /// Distinct messages received that were sent after the warm-up.
    pub measured: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub latency_ns: Histogram<u64>,
}

impl Tally {
    pub fn new(publishers: usize, measure_from_ns: u64) -> Self {
        Tally {
            next_expected: vec![0; publishers],
            seen: (0..publishers).map(|_| roaring_like::Bits::default()).collect(),
            measure_from_ns,
            received: 0,
            measured: 0,
            duplicates: 0,
            out_of_order: 0,
            malformed: 0,
            latency_ns: latency_histogram(),
        }
    }

    pub fn record(&mut self, payload: &[u8], now_ns: u64) {
        let Some((sent, publisher, sequence)) = read_stamp(payload) else {
            self.malformed += 1;
            return;
        };
        let Some(seen) = self.seen.get_mut(publisher as usize) else {
            self.malformed += 1;
            return;
        };
        if !seen.insert(sequence) {
            self.duplicates += 1;
            return;
        }
        self.received += 1;
        let next = &mut self.next_expected[publisher as usize];
        if sequence + 1 < *next {
            self.out_of_order += 1;
        } else {
            *next = sequence + 1;
        }
        if sent >= self.measure_from_ns {
            self.measured += 1;
            let _ = self.latency_ns.record(now_ns.saturating_sub(sent).max(1));
        }
    }

    /// Messages a publisher sent that this subscriber never saw.
    pub fn missing(&self, sent_per_publisher: &[u64]) -> u64 {
        sent_per_publisher
            .iter()
            .zip(&self.seen)
            .map(|(sent, seen)| sent.saturating_sub(seen.count_below(*sent)))
            .sum()
    }

    /// Adds another subscriber's counts and latencies.
    pub fn merge(&mut self, other: &Tally) {
        self.received += other.received;
        self.measured += other.measured;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.malformed += other.malformed;
        self.latency_ns.add(&other.latency_ns).expect("same bounds");
    }

    /// Adds the messages another member of the same shared subscription group saw to those
    /// this one saw, so that `missing` counts what the group as a whole never received.
    /// Returns how many the two both received: each message goes to one member only.
    pub fn merge_seen(&mut self, other: &Tally) -> u64 {
        self.seen.iter_mut().zip(&other.seen).map(|(mine, theirs)| mine.union_with(theirs)).sum()
    }
}

/// A growable bitset of sequence numbers (dense: publishers number from 0).
mod roaring_like {
    #[derive(Default)]
    pub struct Bits {
        words: Vec<u64>,
        count: u64,
    }

    impl Bits {
        /// Returns false if already present.
        pub fn insert(&mut self, n: u64) -> bool {
            let word = (n / 64) as usize;
            if word >= self.words.len() {
                self.words.resize(word + 1, 0);
            }
            let bit = 1u64 << (n % 64);
            let fresh = self.words[word] & bit == 0;
            self.words[word] |= bit;
            self.count += u64::from(fresh);
            fresh
        }

        /// Adds `other`'s members; returns how many were members of both.
        pub fn union_with(&mut self, other: &Bits) -> u64 {
            if other.words.len() > self.words.len() {
                self.words.resize(other.words.len(), 0);
            }
            let mut common = 0;
            for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
                common += u64::from((*mine & theirs).count_ones());
                self.count += u64::from((theirs & !*mine).count_ones());
                *mine |= theirs;
            }
            common
        }

        /// How many members are below `limit`.
        pub fn count_below(&self, limit: u64) -> u64 {
            let full = (limit / 64) as usize;
            let mut count: u64 =
                self.words.iter().take(full).map(|w| u64::from(w.count_ones())).sum();
            if let Some(word) = self.words.get(full) {
                let mask = (1u64 << (limit % 64)) - 1;
                count += u64::from((word & mask).count_ones());
            }
            count
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(publisher: u32, sequence: u64, sent: u64) -> Vec<u8> {
        let mut buf = vec![0; 64];
        stamp(&mut buf, sent, publisher, sequence);
        buf
    }

    #[test]
    fn detects_loss_duplicates_and_reordering() {
        let mut tally = Tally::new(2, 0);
        for sequence in [0, 1, 3, 2, 3, 5] {
            tally.record(&payload(0, sequence, 10), 110);
        }
        tally.record(&payload(1, 0, 10), 20);
        assert_eq!(tally.received, 6);
        assert_eq!(tally.duplicates, 1, "3 twice");
        assert_eq!(tally.out_of_order, 1, "2 after 3");
        // Publisher 0 sent 0..=6 (7), 4 and 6 never came; publisher 1 sent 2, 1 never came.
        assert_eq!(tally.missing(&[7, 2]), 3);
    }

    #[test]
    fn unknown_publishers_and_short_payloads_are_malformed() {
        let mut tally = Tally::new(1, 0);
        tally.record(&payload(7, 0, 0), 1);
        tally.record(b"short", 1);
        assert_eq!((tally.malformed, tally.received), (2, 0));
    }

    #[test]
    fn merged_histograms_keep_every_sample() {
        let mut a = Tally::new(1, 0);
        let mut b = Tally::new(1, 0);
        a.record(&payload(0, 0, 0), 1_000);
        b.record(&payload(0, 0, 0), 9_000_000);
        a.merge(&b);
        assert_eq!(a.latency_ns.len(), 2);
        assert!(a.latency_ns.max() >= 8_990_000);
        assert_eq!(a.received, 2);
    }

    #[test]
    fn warm_up_is_checked_for_loss_but_not_measured() {
        let mut tally = Tally::new(1, 1_000);
        tally.record(&payload(0, 0, 500), 600);
        tally.record(&payload(0, 1, 1_500), 1_600);
        assert_eq!((tally.received, tally.measured), (2, 1));
        assert_eq!(tally.latency_ns.len(), 1, "only the message sent after the warm-up");
        assert_eq!(tally.missing(&[3]), 1);
    }

    #[test]
    fn a_shared_group_is_counted_as_one_receiver() {
        let mut a = Tally::new(2, 0);
        let mut b = Tally::new(2, 0);
        for sequence in [0, 2, 4] {
            a.record(&payload(0, sequence, 0), 1);
        }
        for sequence in [1, 2, 3] {
            b.record(&payload(0, sequence, 0), 1);
        }
        b.record(&payload(1, 0, 0), 1);
        let mut group = Tally::new(2, 0);
        assert_eq!(group.merge_seen(&a), 0);
        assert_eq!(group.merge_seen(&b), 1, "2 reached both members");
        // Publisher 0 sent 0..=5: only 5 is missing; publisher 1 sent 0..=1: 1 is missing.
        assert_eq!(group.missing(&[6, 2]), 2);
    }
}
