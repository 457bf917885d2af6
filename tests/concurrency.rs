//! Many tasks, one socket: split senders, cancel-safe `recv`, the send-queue policies, and
//! broadcast through the hub to many sockets, one of which never reads.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use common::{serve, within, RawClient};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as T;
use tower_websocket::hub::{Delivery, Hub, HubBackend};
use tower_websocket::{CloseCode, Message, QueuePolicy, SendError, WebSocket, WebSocketLayer};

async fn server(layer: WebSocketLayer) -> SocketAddr {
    serve(Router::new().layer(layer)).await
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr) -> Client {
    tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_send_on_one_socket_whole_frames_in_order_per_sender() {
    const TASKS: usize = 8;
    const EACH: usize = 300;
    let addr = server(WebSocketLayer::new(|ws: WebSocket| async move {
        let (_rx, tx) = ws.split();
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        // Sizes vary so that frames of several lengths interleave if they could.
                        let pad = "x".repeat((i * 37 + t * 101) % 3000);
                        tx.send(format!("{t}:{i}:{pad}")).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }))
    .await;
    let mut client = connect(addr).await;
    let mut next_of: HashMap<usize, usize> = HashMap::new();
    for _ in 0..TASKS * EACH {
        let msg = within("a message", client.next()).await.unwrap().unwrap();
        let text = msg.into_text().unwrap();
        let mut fields = text.splitn(3, ':');
        let t: usize = fields.next().unwrap().parse().unwrap();
        let i: usize = fields.next().unwrap().parse().unwrap();
        let pad = fields.next().unwrap();
        assert_eq!(
            pad.len(),
            (i * 37 + t * 101) % 3000,
            "a frame was cut or mixed"
        );
        let expected = next_of.entry(t).or_insert(0);
        assert_eq!(i, *expected, "task {t} out of order");
        *expected += 1;
    }
    assert!(next_of.values().all(|&n| n == EACH));
}

#[tokio::test]
async fn recv_cancelled_in_select_loses_nothing() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = server(WebSocketLayer::new(move |mut ws: WebSocket| {
        let tx = tx.clone();
        async move {
            let mut got = Vec::new();
            let mut cancelled = 0u32;
            loop {
                // A timer that often wins: `recv` is dropped mid-wait again and again.
                tokio::select! {
                    msg = ws.recv() => match msg {
                        Some(msg) => got.push(msg.as_text().unwrap().to_string()),
                        None => break,
                    },
                    () = tokio::time::sleep(Duration::from_micros(50)) => cancelled += 1,
                }
            }
            let _ = tx.send((got, cancelled));
        }
    }))
    .await;
    let mut client = connect(addr).await;
    for i in 0..1000 {
        client.send(T::text(i.to_string())).await.unwrap();
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    client.close(None).await.unwrap();
    let (got, cancelled) = within("the handler", rx.recv()).await.unwrap();
    let expected: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    assert!(
        cancelled > 0,
        "the timer never won: the test proved nothing"
    );
}

#[tokio::test]
async fn pongs_and_close_replies_go_out_while_the_handler_is_busy() {
    let addr = server(WebSocketLayer::new(|ws: WebSocket| async move {
        // Busy (awaiting something else) for longer than the test: it holds the socket but
        // never reads. (Dropping every handle would close the socket with 1000.)
        let _socket = ws;
        tokio::time::sleep(Duration::from_secs(30)).await;
    }))
    .await;
    let mut raw = RawClient::connect(addr, "/").await;
    let started = Instant::now();
    raw.send_frame(true, 0x9, b"still there?").await;
    let pong = raw.read_frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (0xA, &b"still there?"[..])
    );
    raw.send_frame(true, 0x8, &common::close_payload(1000, b""))
        .await;
    assert_eq!(raw.expect_close().await.close_code(), 1000);
    raw.expect_eof().await;
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A handler that sends `n` messages with `try_send` in one go, without yielding, so the
/// queue (capacity 2) overflows before the connection task can drain it; then reports.
fn burst(n: usize, report: mpsc::UnboundedSender<Vec<Result<(), SendError>>>) -> WebSocketLayer {
    WebSocketLayer::new(move |mut ws: WebSocket| {
        let report = report.clone();
        async move {
            let tx = ws.sender();
            let results: Vec<_> = (0..n).map(|i| tx.try_send(format!("m{i}"))).collect();
            let _ = report.send(results);
            while ws.recv().await.is_some() {}
        }
    })
}

#[tokio::test]
async fn fail_policy_refuses_what_does_not_fit_and_stays_open() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = server(burst(5, tx).send_queue(2, QueuePolicy::Fail)).await;
    let mut raw = RawClient::connect(addr, "/").await;
    let results = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(results[..2], [Ok(()), Ok(())]);
    assert!(
        results[2..]
            .iter()
            .all(|r| matches!(r, Err(SendError::QueueFull(_)))),
        "{results:?}"
    );
    // What fit is delivered, in order, and the connection is still open.
    assert_eq!(raw.read_frame().await.unwrap().payload, b"m0");
    assert_eq!(raw.read_frame().await.unwrap().payload, b"m1");
    raw.send_frame(true, 0x9, b"open?").await;
    assert_eq!(raw.read_frame().await.unwrap().opcode, 0xA);
}

#[tokio::test]
async fn close_policy_closes_the_slow_peer_with_its_code() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr =
        server(burst(5, tx).send_queue(2, QueuePolicy::Close(CloseCode::POLICY_VIOLATION))).await;
    let mut raw = RawClient::connect(addr, "/").await;
    let results = within("the handler", rx.recv()).await.unwrap();
    assert_eq!(results[..2], [Ok(()), Ok(())]);
    assert!(
        results[2..]
            .iter()
            .all(|r| matches!(r, Err(SendError::Closed(_)))),
        "{results:?}"
    );
    let close = raw.expect_close().await;
    assert_eq!(close.close_code(), 1008);
    raw.expect_eof().await;
}

#[tokio::test]
async fn wait_policy_holds_the_sender_until_the_peer_reads() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = server(
        WebSocketLayer::new(move |ws: WebSocket| {
            let tx = tx.clone();
            async move {
                let started = Instant::now();
                for i in 0..200 {
                    ws.send(Message::binary(vec![i as u8; 64 * 1024]))
                        .await
                        .unwrap();
                }
                let _ = tx.send(started.elapsed());
            }
        })
        .send_queue(4, QueuePolicy::Wait),
    )
    .await;
    let mut raw = RawClient::connect(addr, "/").await;
    // 12.5 MiB cannot sit in socket buffers and a 4-message queue: the handler waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rx.try_recv().is_err(),
        "the sender finished without the peer reading"
    );
    for i in 0..200u32 {
        let frame = raw.read_frame().await.unwrap();
        assert_eq!(
            (frame.payload.len(), frame.payload[0]),
            (64 * 1024, i as u8)
        );
    }
    let waited = within("the handler", rx.recv()).await.unwrap();
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
}

// ---- the hub ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_to_1000_sockets_where_one_never_reads() {
    const SOCKETS: usize = 1000;
    const MESSAGES: usize = 200;
    let hub = Hub::new();
    let layer = {
        let hub = hub.clone();
        WebSocketLayer::new(move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _sub = hub.subscribe("all", &tx);
                while rx.recv().await.is_some() {}
            }
        })
        .write_timeout(None)
    };
    let addr = server(layer).await;

    // The slow one: connected and subscribed, never reads a byte, with a small TCP window.
    let _slow = RawClient::connect_small_window(addr, "/").await;
    let mut readers = Vec::new();
    for _ in 1..SOCKETS {
        readers.push(connect(addr).await);
    }
    within("every subscription", async {
        while hub.subscriber_count("all") < SOCKETS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // Readers count what they get, checking the order.
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for mut reader in readers {
        let received = received.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                // A run past the keepalive interval gets the server's pings between the
                // messages (tungstenite answers them): only data counts here.
                let msg = loop {
                    let msg = reader.next().await.unwrap().unwrap();
                    if !msg.is_ping() && !msg.is_pong() {
                        break msg;
                    }
                };
                assert_eq!(msg.into_data()[..4], (i as u32).to_be_bytes());
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }

    // Publish one message, wait until every reader has it, and so on: the time per round is
    // the fan-out time to 1000 sockets. The slow socket never holds the publisher up.
    let mut total = Delivery::default();
    let mut slowest_publish = Duration::ZERO;
    let mut fan_out = Duration::ZERO;
    for i in 0..MESSAGES {
        let mut payload = vec![0u8; 1024];
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        let t = Instant::now();
        let d = hub.publish("all", Message::binary(payload));
        slowest_publish = slowest_publish.max(t.elapsed());
        total.delivered += d.delivered;
        total.dropped += d.dropped;
        total.closed += d.closed;
        let goal = (i + 1) * (SOCKETS - 1);
        within("every reader to get the message", async {
            while received.load(std::sync::atomic::Ordering::SeqCst) < goal {
                tokio::task::yield_now().await;
            }
        })
        .await;
        fan_out += t.elapsed();
    }
    eprintln!(
        "broadcast: {SOCKETS} sockets, {MESSAGES} messages of 1 KiB: mean fan-out to all {} readers \
         {:?} per message, slowest publish call {slowest_publish:?}; delivered {}, dropped {} \
         (all to the socket that never reads: its queue holds 64 messages), closed {}",
        SOCKETS - 1,
        fan_out / MESSAGES as u32,
        total.delivered,
        total.dropped,
        total.closed
    );
    // Every reader got every message in order (checked by the readers), and the socket that
    // never reads did not hold anybody up. (200 KiB still fit in its kernel buffers: the next
    // test makes a slow subscriber overflow.)
    assert_eq!(total.closed, 0);
    assert_eq!(total.delivered + total.dropped, SOCKETS * MESSAGES);
    assert!(total.dropped < MESSAGES, "{total:?}");
    assert!(
        slowest_publish < Duration::from_secs(1),
        "{slowest_publish:?}"
    );
}

/// Bursts of publishes from one task while the subscribers' connections write on the other
/// worker: publishes join the batch a connection may be sealing at that moment. Every
/// subscriber must get every message once, in order, and each publish must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_publishes_racing_the_writers_arrive_whole_and_in_order() {
    const SOCKETS: usize = 200;
    const BURSTS: usize = 40;
    const BURST: usize = 50;
    let hub = Hub::new();
    let layer = {
        let hub = hub.clone();
        WebSocketLayer::new(move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _sub = hub.subscribe("all", &tx);
                while rx.recv().await.is_some() {}
            }
        })
        // Room for every message, however far a busy machine lets a connection fall behind:
        // a drop here would be the machine's, not a race's.
        .send_queue(1 << 16, QueuePolicy::Fail)
    };
    let addr = server(layer).await;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..SOCKETS {
        let mut reader = connect(addr).await;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            for i in 0..BURSTS * BURST {
                let msg = loop {
                    let msg = reader.next().await.unwrap().unwrap();
                    if !msg.is_ping() && !msg.is_pong() {
                        break msg;
                    }
                };
                assert_eq!(msg.into_data()[..], (i as u32).to_be_bytes(), "message {i}");
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    within("every subscription", async {
        while hub.subscriber_count("all") < SOCKETS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut next = 0u32;
    for burst in 0..BURSTS {
        for _ in 0..BURST {
            let d = hub.publish("all", Message::binary(next.to_be_bytes().to_vec()));
            // Every queue has room: none is missed.
            assert_eq!(
                (d.delivered, d.dropped, d.closed),
                (SOCKETS, 0, 0),
                "{next}"
            );
            next += 1;
        }
        // Let the writers run (on the other worker too) before the next burst, sometimes
        // waiting for them, sometimes not.
        if burst % 3 == 0 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    within("every reader to get every message", async {
        while received.load(std::sync::atomic::Ordering::SeqCst) < SOCKETS * BURSTS * BURST {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for reader in readers {
        reader.await.expect("a reader saw every message in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_misses_messages_and_holds_nobody_up() {
    const READERS: usize = 9;
    const MESSAGES: usize = 200; // of 64 KiB: 12.5 MiB each, more than any kernel buffers
    let hub = Hub::new();
    let addr = server({
        let hub = hub.clone();
        WebSocketLayer::new(move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _sub = hub.subscribe("all", &tx);
                while rx.recv().await.is_some() {}
            }
        })
        .write_timeout(None)
    })
    .await;
    let _slow = RawClient::connect_small_window(addr, "/").await;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..READERS {
        let mut reader = connect(addr).await;
        let received = received.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                // A run past the keepalive interval gets the server's pings between the
                // messages (tungstenite answers them): only data counts here.
                let msg = loop {
                    let msg = reader.next().await.unwrap().unwrap();
                    if !msg.is_ping() && !msg.is_pong() {
                        break msg;
                    }
                };
                assert_eq!(msg.into_data()[..4], (i as u32).to_be_bytes());
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    within("every subscription", async {
        while hub.subscriber_count("all") < READERS + 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let mut dropped = 0;
    for i in 0..MESSAGES {
        let mut payload = vec![0u8; 64 * 1024];
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        let d = hub.publish("all", Message::binary(payload));
        assert_eq!(d.delivered + d.dropped, READERS + 1);
        dropped += d.dropped;
        within("the readers", async {
            while received.load(std::sync::atomic::Ordering::SeqCst) < (i + 1) * READERS {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    // Only the slow one missed messages: a fast reader missing one fails its order check
    // (and then `received` never reaches its goal).
    assert!(dropped > 0 && dropped < MESSAGES, "dropped {dropped}");
    eprintln!(
        "slow subscriber: of {MESSAGES} messages of 64 KiB it was queued {} and missed {dropped}; \
         its queue never held more than 64 messages (4 MiB of shared payload)",
        MESSAGES - dropped
    );
}

#[tokio::test]
async fn publish_except_skips_the_sender_and_closed_subscribers_are_removed() {
    let hub = Hub::new();
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    let layer = {
        let hub = hub.clone();
        WebSocketLayer::new(move |ws: WebSocket| {
            let (hub, report_tx) = (hub.clone(), report_tx.clone());
            async move {
                let (mut rx, tx) = ws.split();
                let _sub = hub.subscribe("room", &tx);
                while let Some(msg) = rx.recv().await {
                    let d = hub.publish_except("room", msg, &tx);
                    let _ = report_tx.send(d);
                }
            }
        })
    };
    let addr = server(layer).await;
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    let mut c = connect(addr).await;
    within("subscriptions", async {
        while hub.subscriber_count("room") < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    a.send(T::text("from a")).await.unwrap();
    assert_eq!(
        within("b", b.next()).await.unwrap().unwrap(),
        T::text("from a")
    );
    assert_eq!(
        within("c", c.next()).await.unwrap().unwrap(),
        T::text("from a")
    );
    let d = within("report", report_rx.recv()).await.unwrap();
    assert_eq!((d.delivered, d.dropped, d.closed), (2, 0, 0));
    // a did not get its own message.
    c.send(T::text("from c")).await.unwrap();
    assert_eq!(
        within("a", a.next()).await.unwrap().unwrap(),
        T::text("from c")
    );
    // A socket that leaves is unsubscribed.
    drop(b);
    within("b to leave", async {
        while hub.subscriber_count("room") != 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A backend that links two hubs, as a message bus would link two processes.
struct Link(Arc<Mutex<Option<Hub>>>);

impl HubBackend for Link {
    fn publish(&self, topic: &str, message: &Message) {
        if let Some(other) = self.0.lock().unwrap().as_ref() {
            other.deliver_local(topic, message.clone());
        }
    }
}

#[tokio::test]
async fn a_backend_carries_messages_to_another_hub() {
    let slot = Arc::new(Mutex::new(None));
    let here = Hub::with_backend(Link(slot.clone()));
    let there = Hub::new();
    *slot.lock().unwrap() = Some(there.clone());
    let layer = |hub: Hub| {
        WebSocketLayer::new(move |ws: WebSocket| {
            let hub = hub.clone();
            async move {
                let (mut rx, tx) = ws.split();
                let _sub = hub.subscribe("news", &tx);
                while rx.recv().await.is_some() {}
            }
        })
    };
    let addr_there = server(layer(there.clone())).await;
    let mut reader = connect(addr_there).await;
    within("the subscription", async {
        while there.subscriber_count("news") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let d = here.publish("news", "extra!");
    assert_eq!(d.delivered, 0, "nobody is subscribed here");
    assert_eq!(
        within("the message", reader.next()).await.unwrap().unwrap(),
        T::text("extra!")
    );
}

#[tokio::test]
async fn sockets_coming_and_going_by_the_thousand_leave_nothing_behind() {
    let hub = Hub::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = server({
        let hub = hub.clone();
        WebSocketLayer::new(move |ws: WebSocket| {
            let (hub, tx) = (hub.clone(), tx.clone());
            async move {
                let (_rx, sender) = ws.split();
                let subs: Vec<_> = (0..1000)
                    .map(|i| hub.subscribe(&format!("t{}", i % 50), &sender))
                    .collect();
                let _ = tx.send(hub.topic_count());
                drop(subs);
                let _ = tx.send(hub.topic_count());
            }
        })
    })
    .await;
    let _client = connect(addr).await;
    assert_eq!(within("subscribed", rx.recv()).await.unwrap(), 50);
    assert_eq!(within("unsubscribed", rx.recv()).await.unwrap(), 0);
}
