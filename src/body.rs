//! The response bodies of the layer: [`ResponseBody`], what
//! [`WebSocketService`](crate::WebSocketService) answers with (the inner service's body,
//! untouched, or the layer's own short plain body), and [`PlainBody`], the layer's own body on
//! its own (a refusal, or the empty `101`).
//!
//! Users seldom name them: both implement [`http_body::Body`] with `Data = Bytes`, which is all
//! axum and hyper ask for.
//!
//! ```
//! use bytes::Bytes;
//! use http_body::Body;
//! use tower_websocket::body::{PlainBody, ResponseBody};
//!
//! let body: ResponseBody<String> = ResponseBody::plain(Bytes::from_static(b"refused"));
//! assert_eq!(body.size_hint().exact(), Some(7));
//! let plain = PlainBody::new(Bytes::from_static(b"refused"));
//! assert_eq!(plain.size_hint().exact(), Some(7));
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's body, or a plain body of the layer's own.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Plain { #[pin] body: PlainBody },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// A body of the layer's own.
    pub fn plain(data: Bytes) -> Self {
        ResponseBody {
            kind: Kind::Plain {
                body: PlainBody::new(data),
            },
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::plain(Bytes::new())
    }
}

impl<B> From<PlainBody> for ResponseBody<B> {
    fn from(body: PlainBody) -> Self {
        ResponseBody {
            kind: Kind::Plain { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Plain { body } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Plain { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Plain { body } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Plain { .. } => "Plain",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

/// A body of one chunk of bytes, known in full: the layer's refusals and its empty `101`.
///
/// Its size is exact, so hyper sends a `Content-Length`.
#[derive(Debug, Clone, Default)]
pub struct PlainBody {
    data: Option<Bytes>,
}

impl PlainBody {
    /// A body of `data`.
    pub fn new(data: Bytes) -> Self {
        PlainBody {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl From<Bytes> for PlainBody {
    fn from(data: Bytes) -> Self {
        PlainBody::new(data)
    }
}

impl Body for PlainBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn plain_body_yields_its_bytes_once() {
        let body = PlainBody::new(Bytes::from_static(b"refused"));
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"refused");
    }

    #[tokio::test]
    async fn empty_plain_body_is_at_its_end() {
        let body = PlainBody::default();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}
