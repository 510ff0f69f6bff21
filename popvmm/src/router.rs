//! The mesh's messages to their services: a message type's number range names its service
//! (see `pop_migrate::msg`); the node's own (`PING`) is answered here, the others go to the
//! host's services. A number no service owns, or a failing service, is logged and, for a
//! request, answered with the error.

use std::sync::{Arc, Weak};

use net_msg::Incoming;
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
fn route(host: &Arc<Host>, mut m: Incoming) {
    let result = match MsgType::from_number(m.msg_type) {
        None => Err(format!("message of unknown type {}", m.msg_type)),
        Some(t) if t.service() == Service::Node => node(t, &mut m),
        Some(t) => match host.service(t.service()) {
            Some(service) => service.handle(host, t, &mut m),
            None => Err(format!("no service takes {t:?}")),
        },
    };
    if let Err(e) = result {
        tracing::warn!(from = m.from, "message {}: {e}", m.msg_type);
        if let Some(r) = m.take_responder() {
            let _ = r.fail(&e);
        }
    }
}

/// The node's own messages.
fn node(t: MsgType, m: &mut Incoming) -> Result<(), String> {
    match t {
        MsgType::Ping => {
            let payload = std::mem::take(&mut m.payload);
            let responder = m.take_responder().ok_or("PING must be a request")?;
            responder.respond(&payload).map_err(|e| e.to_string())
        }
        _ => Err(format!("{t:?} is not a node message")),
    }
}
