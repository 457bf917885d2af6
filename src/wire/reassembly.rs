//! Turning data frames into whole messages: fragment order, the total size limit and UTF-8,
//! the RFC rules fastwebsockets leaves to its caller.
//!
//! An unfragmented message is handed on without a copy; only a fragmented one is gathered.
//! UTF-8 is checked as each text fragment arrives, so invalid text fails at the fragment where
//! it becomes invalid, not when the message completes.

use bytes::{Bytes, BytesMut};
use fastwebsockets::OpCode;

use crate::socket::message::{Message, Utf8Bytes};
use crate::wire::violation::Violation;

/// The message being gathered from fragments, if any.
#[derive(Debug)]
pub(crate) struct Reassembly {
    max_message_size: usize,
    /// `Some(true)` for text, `Some(false)` for binary, `None` between messages.
    text: Option<bool>,
    buffer: BytesMut,
    /// How many leading bytes of `buffer` are known to be complete UTF-8.
    validated: usize,
}

impl Reassembly {
    pub(crate) fn new(max_message_size: usize) -> Self {
        Reassembly {
            max_message_size,
            text: None,
            buffer: BytesMut::new(),
            validated: 0,
        }
    }

    /// Takes one data frame (text, binary or continuation); returns the message it completes.
    pub(crate) fn push(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: Bytes,
    ) -> Result<Option<Message>, Violation> {
        match opcode {
            OpCode::Text | OpCode::Binary => {
                if self.text.is_some() {
                    return Err(Violation::protocol(
                        "new message started inside a fragmented message",
                    ));
                }
                if payload.len() > self.max_message_size {
                    return Err(Violation::TOO_BIG);
                }
                let text = opcode == OpCode::Text;
                if fin {
                    return whole(text, payload).map(Some);
                }
                self.text = Some(text);
                self.buffer.extend_from_slice(&payload);
                self.check_utf8(false)?;
                Ok(None)
            }
            OpCode::Continuation => {
                if self.text.is_none() {
                    return Err(Violation::protocol(
                        "continuation frame without a message to continue",
                    ));
                }
                if self.buffer.len() + payload.len() > self.max_message_size {
                    return Err(Violation::TOO_BIG);
                }
                self.buffer.extend_from_slice(&payload);
                self.check_utf8(fin)?;
                if !fin {
                    return Ok(None);
                }
                let text = self.text.take().unwrap_or(false);
                self.validated = 0;
                whole(text, self.buffer.split().freeze()).map(Some)
            }
            _ => Err(Violation::protocol("control frame given as data")),
        }
    }

    /// Checks the text gathered so far; at the last fragment nothing may be left incomplete.
    fn check_utf8(&mut self, fin: bool) -> Result<(), Violation> {
        if self.text != Some(true) {
            return Ok(());
        }
        match std::str::from_utf8(&self.buffer[self.validated..]) {
            Ok(_) => self.validated = self.buffer.len(),
            Err(e) if e.error_len().is_some() => return Err(Violation::INVALID_UTF8),
            Err(e) => {
                // The fragment ends inside a character: fine, unless it is the last one.
                self.validated += e.valid_up_to();
                if fin {
                    return Err(Violation::INVALID_UTF8);
                }
            }
        }
        Ok(())
    }
}

fn whole(text: bool, payload: Bytes) -> Result<Message, Violation> {
    if text {
        Utf8Bytes::try_from(payload)
            .map(Message::Text)
            .map_err(|_| Violation::INVALID_UTF8)
    } else {
        Ok(Message::Binary(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::close::CloseCode;

    fn b(data: &[u8]) -> Bytes {
        Bytes::copy_from_slice(data)
    }

    #[test]
    fn single_frame_is_passed_on_without_copy() {
        let mut r = Reassembly::new(100);
        let payload = b(b"hello");
        let ptr = payload.as_ptr();
        let msg = r.push(true, OpCode::Binary, payload).unwrap().unwrap();
        assert_eq!(msg.into_bytes().as_ptr(), ptr);
    }

    #[test]
    fn fragments_are_joined() {
        let mut r = Reassembly::new(100);
        assert_eq!(r.push(false, OpCode::Text, b(b"hel")), Ok(None));
        assert_eq!(r.push(false, OpCode::Continuation, b(b"")), Ok(None));
        let msg = r
            .push(true, OpCode::Continuation, b(b"lo"))
            .unwrap()
            .unwrap();
        assert_eq!(msg.as_text(), Some("hello"));
    }

    #[test]
    fn a_character_split_across_fragments_is_fine() {
        let mut r = Reassembly::new(100);
        let euro = "€".as_bytes();
        assert_eq!(r.push(false, OpCode::Text, b(&euro[..1])), Ok(None));
        assert_eq!(
            r.push(false, OpCode::Continuation, b(&euro[1..2])),
            Ok(None)
        );
        let msg = r
            .push(true, OpCode::Continuation, b(&euro[2..]))
            .unwrap()
            .unwrap();
        assert_eq!(msg.as_text(), Some("€"));
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_breaks_it() {
        let mut r = Reassembly::new(100);
        assert_eq!(r.push(false, OpCode::Text, b(b"ok")), Ok(None));
        // 0xF4 0x90 can never start a valid character: fail now, not at the end.
        assert_eq!(
            r.push(false, OpCode::Continuation, b(&[0xf4, 0x90])),
            Err(Violation::INVALID_UTF8)
        );
    }

    #[test]
    fn text_ending_inside_a_character_is_invalid() {
        let mut r = Reassembly::new(100);
        assert_eq!(r.push(false, OpCode::Text, b(&[0xe2, 0x82])), Ok(None));
        assert_eq!(
            r.push(true, OpCode::Continuation, b(b"")),
            Err(Violation::INVALID_UTF8)
        );
    }

    #[test]
    fn size_limit_counts_every_fragment() {
        let mut r = Reassembly::new(10);
        assert_eq!(r.push(false, OpCode::Binary, b(&[0; 6])), Ok(None));
        assert_eq!(
            r.push(true, OpCode::Continuation, b(&[0; 5])),
            Err(Violation::TOO_BIG)
        );
        let mut r = Reassembly::new(10);
        assert!(r.push(true, OpCode::Binary, b(&[0; 10])).is_ok());
        assert_eq!(
            r.push(true, OpCode::Binary, b(&[0; 11])),
            Err(Violation::TOO_BIG)
        );
    }

    #[test]
    fn continuation_without_start_is_a_protocol_error() {
        let mut r = Reassembly::new(10);
        let err = r.push(true, OpCode::Continuation, b(b"x")).unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn new_message_inside_fragmented_one_is_a_protocol_error() {
        let mut r = Reassembly::new(10);
        r.push(false, OpCode::Text, b(b"a")).unwrap();
        let err = r.push(true, OpCode::Text, b(b"b")).unwrap_err();
        assert_eq!(err.code, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn empty_text_is_a_message() {
        let mut r = Reassembly::new(10);
        let msg = r.push(true, OpCode::Text, Bytes::new()).unwrap().unwrap();
        assert_eq!(msg.as_text(), Some(""));
    }
}
