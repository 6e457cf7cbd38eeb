//! One received publish → one [`Prepared`] unit for the store: route, size
//! cap, decode, enrollment, validation. Every failure becomes a recorded
//! rejection; only a database outage while looking up a device is an error
//! (the caller retries, nothing is refused because the database blinked).

use std::sync::Arc;

use crate::decode::{self, DecodeError, WireMessage};
use crate::directory::Directory;
use crate::domain::{DeviceId, RejectReason};
use crate::ingest::topic::{self, Route};
use crate::ingest::Incoming;
use crate::store::{AcceptedMessage, DeviceRecord, Prepared, Rejection, Store, StoreError};

/// Settings of the prepare step.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// Topic prefix (ends with `/` or is empty).
    pub topic_prefix: String,
    /// Application payload cap in bytes.
    pub max_payload: usize,
}

struct Refused {
    reason: RejectReason,
    detail: String,
    device_key: Option<i64>,
    claim: Option<String>,
    key: Option<crate::domain::MessageKey>,
}

impl From<DecodeError> for Refused {
    fn from(e: DecodeError) -> Self {
        refused(e.reason, e.detail)
    }
}

fn refused(reason: RejectReason, detail: impl Into<String>) -> Refused {
    Refused {
        reason,
        detail: detail.into(),
        device_key: None,
        claim: None,
        key: None,
    }
}

/// Prepares one message; `Err` only when the device directory could not
/// reach the database.
pub async fn prepare<S: Store>(
    inc: &Incoming,
    dir: &Directory<S>,
    cfg: &PrepareConfig,
) -> Result<Prepared, StoreError> {
    match accept(inc, dir, cfg).await? {
        Ok(m) => Ok(Prepared::Accepted(Box::new(m))),
        Err(r) => Ok(Prepared::Rejected(Box::new(
            Rejection {
                received_at: inc.received_at,
                topic: inc.topic.clone(),
                device_key: r.device_key,
                device_claim: r.claim,
                key: r.key,
                reason: r.reason,
                detail: r.detail,
                payload: Some(inc.payload.clone()),
            }
            .capped(),
        ))),
    }
}

async fn accept<S: Store>(
    inc: &Incoming,
    dir: &Directory<S>,
    cfg: &PrepareConfig,
) -> Result<Result<AcceptedMessage, Refused>, StoreError> {
    let route = topic::route(&inc.topic, &cfg.topic_prefix);
    let claim = match route {
        Route::Native(d) => Some(d.to_owned()),
        Route::OwnTracks(u, d) => Some(format!("{u}/{d}")),
        Route::Unknown => None,
    };
    let with_claim = |mut r: Refused| {
        r.claim = r.claim.or_else(|| claim.clone());
        r
    };
    if inc.payload.len() > cfg.max_payload {
        return Ok(Err(with_claim(refused(
            RejectReason::Oversize,
            format!(
                "payload is {} bytes; the cap is {}",
                inc.payload.len(),
                cfg.max_payload
            ),
        ))));
    }
    let (wire, device) = match route {
        Route::Unknown => {
            return Ok(Err(refused(
                RejectReason::UnknownTopic,
                "topic matches no Waypoint pattern",
            )))
        }
        Route::Native(seg) => {
            let id = match DeviceId::parse(seg) {
                Ok(id) => id,
                Err(e) => {
                    return Ok(Err(with_claim(refused(
                        RejectReason::InvalidDeviceId,
                        format!("topic device id: {e}"),
                    ))))
                }
            };
            let wire = match decode::decode_native(&inc.payload) {
                Ok(w) => w,
                Err(e) => return Ok(Err(with_claim(e.into()))),
            };
            if wire.device.as_deref() != Some(id.as_str()) {
                let mut r = refused(
                    RejectReason::DeviceMismatch,
                    "payload device differs from the topic's device",
                );
                r.key = Some(wire.key);
                return Ok(Err(with_claim(r)));
            }
            match dir.by_id(&id).await? {
                Some(d) => (wire, d),
                None => return Ok(Err(with_claim(unknown(&wire)))),
            }
        }
        Route::OwnTracks(user, dev) => {
            let wire = match decode::owntracks::decode(&inc.payload) {
                Ok(w) => w,
                Err(e) => return Ok(Err(with_claim(e.into()))),
            };
            match dir.by_owntracks(user, dev).await? {
                Some(d) => (wire, d),
                None => return Ok(Err(with_claim(unknown(&wire)))),
            }
        }
    };
    if device.revoked {
        let mut r = refused(RejectReason::DeviceRevoked, "device enrollment was revoked");
        r.device_key = Some(device.key);
        r.key = Some(wire.key);
        return Ok(Err(with_claim(r)));
    }
    Ok(Ok(accepted(inc, wire, &device)))
}

fn unknown(wire: &WireMessage) -> Refused {
    let mut r = refused(RejectReason::UnknownDevice, "device is not enrolled");
    r.key = Some(wire.key);
    r
}

fn accepted(inc: &Incoming, wire: WireMessage, device: &Arc<DeviceRecord>) -> AcceptedMessage {
    let digest = wire.digest();
    let v = decode::validate(wire, device.id.clone(), inc.received_at);
    AcceptedMessage {
        device_key: device.key,
        topic: inc.topic.clone(),
        received_at: inc.received_at,
        digest,
        telemetry: v.telemetry,
        item_rejections: v.rejections,
        payload: inc.payload.clone(),
        store_fixes: true,
    }
}
