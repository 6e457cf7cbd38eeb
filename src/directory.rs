//! In-memory device directory: topic → enrolled device, without a database
//! round trip per message.
//!
//! Kept fresh by change notifications from the store (LISTEN/NOTIFY on
//! PostgreSQL). A miss still asks the database once, because a device may
//! publish the moment it is enrolled, before the notification arrives;
//! misses are then remembered briefly so a flood of unknown ids cannot turn
//! into a flood of queries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::DeviceId;
use crate::store::{DeviceRecord, Store, StoreError};

/// How long a lookup miss is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Bound on remembered misses; the cache is cleared when it fills.
const NEGATIVE_CAP: usize = 10_000;

/// What a store reports about enrollment changes.
#[derive(Debug, Clone)]
pub enum DirectoryEvent {
    /// This device id changed (enrolled, revoked, re-paired).
    Changed(String),
    /// Notifications may have been missed (reconnect): reload everything.
    Resync,
}

#[derive(Default)]
struct Maps {
    by_id: HashMap<String, Arc<DeviceRecord>>,
    by_owntracks: HashMap<(String, String), Arc<DeviceRecord>>,
}

impl Maps {
    fn insert(&mut self, d: DeviceRecord) {
        let d = Arc::new(d);
        self.remove(d.id.as_str());
        if let Some(pair) = &d.owntracks {
            self.by_owntracks.insert(pair.clone(), d.clone());
        }
        self.by_id.insert(d.id.as_str().to_owned(), d);
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            if let Some(pair) = &old.owntracks {
                self.by_owntracks.remove(pair);
            }
        }
    }
}

/// The directory; share it as `Arc<Directory<S>>`.
pub struct Directory<S> {
    store: S,
    maps: RwLock<Maps>,
    misses: Mutex<HashMap<String, Instant>>,
}

impl<S: Store> Directory<S> {
    /// Loads every device.
    pub async fn load(store: S) -> Result<Arc<Self>, StoreError> {
        let dir = Arc::new(Self {
            store,
            maps: RwLock::default(),
            misses: Mutex::default(),
        });
        dir.reload_all().await?;
        Ok(dir)
    }

    async fn reload_all(&self) -> Result<(), StoreError> {
        let mut maps = Maps::default();
        for d in self.store.devices().await? {
            maps.insert(d);
        }
        *self.maps.write().expect("directory lock poisoned") = maps;
        self.misses.lock().expect("miss lock poisoned").clear();
        Ok(())
    }

    async fn reload_one(&self, id: &str) -> Result<(), StoreError> {
        let rec = match DeviceId::parse(id) {
            Ok(id) => self.store.device(&id).await?,
            Err(_) => None,
        };
        let mut maps = self.maps.write().expect("directory lock poisoned");
        match rec {
            Some(d) => maps.insert(d),
            None => maps.remove(id),
        }
        self.misses.lock().expect("miss lock poisoned").remove(id);
        Ok(())
    }

    fn recently_missed(&self, k: &str) -> bool {
        let misses = self.misses.lock().expect("miss lock poisoned");
        misses.get(k).is_some_and(|t| t.elapsed() < NEGATIVE_TTL)
    }

    fn remember_miss(&self, k: String) {
        let mut misses = self.misses.lock().expect("miss lock poisoned");
        if misses.len() >= NEGATIVE_CAP {
            misses.clear();
        }
        misses.insert(k, Instant::now());
    }

    /// The device with this id, if enrolled (revoked devices included).
    pub async fn by_id(&self, id: &DeviceId) -> Result<Option<Arc<DeviceRecord>>, StoreError> {
        if let Some(d) = self
            .maps
            .read()
            .expect("directory lock poisoned")
            .by_id
            .get(id.as_str())
        {
            return Ok(Some(d.clone()));
        }
        if self.recently_missed(id.as_str()) {
            return Ok(None);
        }
        match self.store.device(id).await? {
            Some(d) => {
                let d = Arc::new(d);
                self.maps
                    .write()
                    .expect("directory lock poisoned")
                    .insert((*d).clone());
                Ok(Some(d))
            }
            None => {
                self.remember_miss(id.as_str().to_owned());
                Ok(None)
            }
        }
    }

    /// The device enrolled for this OwnTracks pair, if any.
    pub async fn by_owntracks(
        &self,
        user: &str,
        device: &str,
    ) -> Result<Option<Arc<DeviceRecord>>, StoreError> {
        let pair = (user.to_owned(), device.to_owned());
        if let Some(d) = self
            .maps
            .read()
            .expect("directory lock poisoned")
            .by_owntracks
            .get(&pair)
        {
            return Ok(Some(d.clone()));
        }
        let miss_key = format!("owntracks/{user}/{device}");
        if self.recently_missed(&miss_key) {
            return Ok(None);
        }
        match self.store.device_by_owntracks(user, device).await? {
            Some(d) => {
                self.maps
                    .write()
                    .expect("directory lock poisoned")
                    .insert(d.clone());
                Ok(Some(Arc::new(d)))
            }
            None => {
                self.remember_miss(miss_key);
                Ok(None)
            }
        }
    }

    /// Applies change events until cancelled. Errors while reloading are
    /// retried on the next event; a resync is requested by the store after
    /// any reconnect.
    pub async fn follow(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<DirectoryEvent>,
        cancel: CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            };
            let r = match &ev {
                DirectoryEvent::Changed(id) => self.reload_one(id).await,
                DirectoryEvent::Resync => self.reload_all().await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "device directory refresh failed; will resync");
                tokio::time::sleep(Duration::from_millis(500)).await;
                // A failed refresh must not leave a stale entry forever.
                let _ = self.reload_all().await;
            }
        }
    }
}
