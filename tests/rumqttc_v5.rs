//! rumqttc's MQTT 5.0 client against the real `culex` binary.

mod common;

use std::time::Duration;

use common::Broker;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn client(broker: &Broker, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(10));
    AsyncClient::new(options, 64)
}

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

#[tokio::test]
async fn v5_publish_with_properties_at_every_qos() {
    let broker = Broker::start("");
    let (sub, mut sub_loop) = client(&broker, "rumq5-sub");
    sub.subscribe("r5/#", QoS::ExactlyOnce).await.unwrap();
    until(&mut sub_loop, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let (publisher, mut pub_loop) = client(&broker, "rumq5-pub");
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let properties = PublishProperties {
            user_properties: vec![("qos".into(), format!("{qos:?}"))],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        publisher.publish_with_properties("r5/t", qos, false, "hi", properties).await.unwrap();
        let got = next_publish(&mut sub_loop).await;
        assert_eq!(got.qos, qos);
        let properties = got.properties.expect("properties forwarded");
        assert_eq!(properties.user_properties, vec![("qos".to_string(), format!("{qos:?}"))]);
        assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
    }
}

#[tokio::test]
async fn v5_session_expiry_with_rumqttc() {
    let broker = Broker::start("");
    let session = |id: &str| {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options.set_clean_start(false).set_session_expiry_interval(Some(60));
        AsyncClient::new(options, 16)
    };
    {
        let (sub, mut sub_loop) = session("rumq5-keep");
        sub.subscribe("keep5/#", QoS::AtLeastOnce).await.unwrap();
        until(&mut sub_loop, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
        sub.disconnect().await.unwrap();
        let _ = timeout(WAIT, async { while sub_loop.poll().await.is_ok() {} }).await;
    }
    let (publisher, mut pub_loop) = client(&broker, "rumq5-keep-pub");
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });
    publisher.publish("keep5/x", QoS::AtLeastOnce, false, "queued").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_sub, mut sub_loop) = session("rumq5-keep");
    let present = until(&mut sub_loop, |p| match p {
        Packet::ConnAck(ack) => Some(ack.session_present),
        _ => None,
    })
    .await;
    assert!(present);
    assert_eq!(&next_publish(&mut sub_loop).await.payload[..], b"queued");
}
