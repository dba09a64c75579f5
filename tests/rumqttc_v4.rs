//! rumqttc (MQTT 3.1.1), a third-party async client, against the real `culex` binary.

mod common;

use std::time::Duration;

use common::Broker;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn client(broker: &Broker, id: &str, clean: bool) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(10)).set_clean_session(clean);
    AsyncClient::new(options, 64)
}

/// Polls until `want` accepts an incoming packet, failing after `WAIT`.
async fn until<T>(eventloop: &mut EventLoop, mut want: impl FnMut(&Packet) -> Option<T>) -> T {
    timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if let Some(found) = want(&packet) {
                        return found;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(error) => panic!("connection error: {error}"),
            }
        }
    })
    .await
    .expect("timed out")
}

async fn next_publish(eventloop: &mut EventLoop) -> Publish {
    until(eventloop, |p| match p {
        Packet::Publish(publish) => Some(publish.clone()),
        _ => None,
    })
    .await
}

async fn subscribed(client: &AsyncClient, eventloop: &mut EventLoop, filter: &str, qos: QoS) {
    client.subscribe(filter, qos).await.unwrap();
    until(eventloop, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
}

/// Drives a publisher's event loop in the background.
fn drive(mut eventloop: EventLoop) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} })
}

#[tokio::test]
async fn publish_and_receive_at_every_qos() {
    let broker = Broker::start("");
    let (sub, mut sub_loop) = client(&broker, "rumq-sub", true);
    subscribed(&sub, &mut sub_loop, "rumq/#", QoS::ExactlyOnce).await;
    let (publisher, pub_loop) = client(&broker, "rumq-pub", true);
    let _driver = drive(pub_loop);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        publisher.publish(format!("rumq/{i}"), qos, false, vec![i as u8; 3]).await.unwrap();
        let got = next_publish(&mut sub_loop).await;
        assert_eq!(
            (got.topic.as_str(), got.qos, &got.payload[..]),
            (&*format!("rumq/{i}"), qos, &[i as u8; 3][..])
        );
    }
}

#[tokio::test]
async fn retained_message_is_delivered_with_the_retain_flag() {
    let broker = Broker::start("");
    let (publisher, pub_loop) = client(&broker, "rumq-ret-pub", true);
    let _driver = drive(pub_loop);
    publisher.publish("rumq/ret", QoS::AtLeastOnce, true, "kept").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (sub, mut sub_loop) = client(&broker, "rumq-ret-sub", true);
    sub.subscribe("rumq/+", QoS::AtLeastOnce).await.unwrap();
    let got = next_publish(&mut sub_loop).await;
    assert!(got.retain);
    assert_eq!(&got.payload[..], b"kept");
}

#[tokio::test]
async fn last_will_on_a_dropped_connection() {
    let broker = Broker::start("");
    let (watcher, mut watch_loop) = client(&broker, "rumq-watch", true);
    subscribed(&watcher, &mut watch_loop, "rumq/will", QoS::AtLeastOnce).await;
    let mut options = MqttOptions::new("rumq-dying", "127.0.0.1", broker.port);
    options.set_last_will(LastWill::new("rumq/will", "gone", QoS::AtLeastOnce, false));
    let (_dying, mut dying_loop) = AsyncClient::new(options, 8);
    until(&mut dying_loop, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    drop(dying_loop); // the socket closes without DISCONNECT
    assert_eq!(&next_publish(&mut watch_loop).await.payload[..], b"gone");
}

#[tokio::test]
async fn persistent_session_resumes_with_queued_messages() {
    let broker = Broker::start("");
    {
        let (sub, mut sub_loop) = client(&broker, "rumq-persist", false);
        subscribed(&sub, &mut sub_loop, "rumq/p", QoS::AtLeastOnce).await;
        sub.disconnect().await.unwrap();
        let _ = timeout(WAIT, async { while sub_loop.poll().await.is_ok() {} }).await;
    }
    let (publisher, pub_loop) = client(&broker, "rumq-persist-pub", true);
    let _driver = drive(pub_loop);
    publisher.publish("rumq/p", QoS::AtLeastOnce, false, "while away").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_sub, mut sub_loop) = client(&broker, "rumq-persist", false);
    let present = until(&mut sub_loop, |p| match p {
        Packet::ConnAck(ack) => Some(ack.session_present),
        _ => None,
    })
    .await;
    assert!(present);
    assert_eq!(&next_publish(&mut sub_loop).await.payload[..], b"while away");
}
