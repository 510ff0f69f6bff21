//! The mesh's messages to their services: a message type's number range names its service
//! (see `pop_migrate::msg`); the node's own (`PING`) is answered here, the others go to the
//! host's services. A number no service owns, or a failing service, is logged and, for a
//! request, answered with the error.

use std::sync::Weak;

use net_msg::Incoming;
use pop_migrate::Error;
use pop_migrate::host::Host;
use pop_migrate::msg::{MsgType, Service};

/// The handler to start the node with: routes each message to its service while `host`
/// lives.
pub fn handler(host: Weak<Host>) -> impl Fn(Incoming) + Send + Sync + 'static {
    move |m| {
        if let Some(host) = host.upgrade() {
            route(&host, m);
        }
    }
}

/// Hands `m` to its service.
fn route(host: &Host, mut m: Incoming) {
    let result = match MsgType::from_number(m.msg_type) {
        None => Err(Error::BadMessage(format!(
            "message of unknown type {}",
            m.msg_type
        ))),
        Some(t) if t.service() == Service::Node => node(t, &mut m),
        Some(t) => match host.service(t.service()) {
            Some(service) => service.handle(host.node(), t, &mut m),
            None => Err(Error::BadMessage(format!("no service takes {}", t.name()))),
        },
    };
    if let Err(e) = result {
        tracing::warn!(from = m.from, "message {}: {e}", m.msg_type);
        if let Some(r) = m.take_responder() {
            let _ = r.fail(&e.to_string());
        }
    }
}

/// The node's own messages.
fn node(t: MsgType, m: &mut Incoming) -> Result<(), Error> {
    match t {
        MsgType::Ping => {
            let payload = std::mem::take(&mut m.payload);
            let responder = m
                .take_responder()
                .ok_or_else(|| Error::BadMessage("PING must be a request".into()))?;
            let _ = responder.respond(&payload);
            Ok(())
        }
        _ => Err(Error::BadMessage(format!(
            "{} is not a node message",
            t.name()
        ))),
    }
}
