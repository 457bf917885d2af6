//! The response body of [`WebSocketService`](crate::WebSocketService): the inner service's body,
//! untouched, or the layer's own short plain body (a refusal, or the empty `101`).
//!
//! Users seldom name it: it implements [`http_body::Body`] with `Data = Bytes`, which is all
//! axum and hyper ask for.
//!
//! ```
//! use bytes::Bytes;
//! use http_body::Body;
//! use tower_websocket::body::ResponseBody;
//!
//! let body: ResponseBody<String> = ResponseBody::plain(Bytes::from_static(b"refused"));
//! assert_eq!(body.size_hint().exact(), Some(7));
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
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
        Plain { #[pin] body: Full<Bytes> },
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
                body: Full::new(data),
            },
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::plain(Bytes::new())
    }
}

impl<B> From<Full<Bytes>> for ResponseBody<B> {
    fn from(body: Full<Bytes>) -> Self {
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
