//! Counting gRPC messages in a byte stream split at arbitrary points.

/// Counts gRPC messages by their 5-byte length prefix (1 flag byte, 4 length bytes, big
/// endian), across arbitrary frame boundaries, without buffering or allocating.
///
/// A message counts once its last payload byte has been seen. A prefix announcing 4 GiB
/// is only a number to count down: nothing is reserved for it.
///
/// # Example
///
/// ```
/// use palisade_core::MessageCounter;
///
/// let mut counter = MessageCounter::default();
/// // One 3-byte message and the first two bytes of the next prefix...
/// assert_eq!(counter.feed(&[0, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0]), 1);
/// assert!(counter.is_mid_message());
/// // ...then the rest of an empty message.
/// assert_eq!(counter.feed(&[0, 0, 0]), 1);
/// assert_eq!(counter.messages(), 2);
/// assert!(!counter.is_mid_message());
/// ```
#[derive(Clone, Debug, Default)]
pub struct MessageCounter {
    prefix: [u8; 5],
    prefix_len: u8,
    remaining: u64,
    messages: u64,
}

impl MessageCounter {
    /// Feeds the next bytes of the stream; returns how many messages they completed.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let before = self.messages;
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len() as u64);
                self.remaining -= take;
                data = &data[take as usize..];
                if self.remaining == 0 {
                    self.messages += 1;
                }
                continue;
            }
            let start = self.prefix_len as usize;
            let take = (5 - start).min(data.len());
            self.prefix[start..start + take].copy_from_slice(&data[..take]);
            self.prefix_len += take as u8;
            data = &data[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                if self.remaining == 0 {
                    self.messages += 1;
                }
            }
        }
        self.messages - before
    }

    /// Messages completed so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether the stream stopped inside a prefix or a payload.
    pub fn is_mid_message(&self) -> bool {
        self.prefix_len > 0 || self.remaining > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_split_over_five_frames() {
        let mut counter = MessageCounter::default();
        for byte in [0u8, 0, 0, 0, 2] {
            assert_eq!(counter.feed(&[byte]), 0);
        }
        assert_eq!(counter.feed(b"h"), 0);
        assert_eq!(counter.feed(b"i"), 1);
    }

    #[test]
    fn four_gib_prefix_is_counted_down_not_reserved() {
        let mut counter = MessageCounter::default();
        assert_eq!(counter.feed(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]), 0);
        assert!(counter.is_mid_message());
        assert_eq!(counter.messages(), 0);
    }
}
