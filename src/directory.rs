//! In-memory device directory: topic → enrolled device, without a database
//! round trip per message.
//!
//! Kept fresh by change notifications from the store (LISTEN/NOTIFY on
//! PostgreSQL). A miss still asks the database once, because a device may
//! publish the moment it is enrolled, before the notification arrives;
//! misses are then remembered briefly so a flood of unknown ids cannot turn
//! into a flood of queries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Bumped by every notified change. A lookup that went to the database
    /// caches its answer only if no change landed meanwhile, so a slow
    /// lookup can never overwrite a newer revocation with an older row.
    generation: AtomicU64,
}

impl<S: Store> Directory<S> {
    /// Loads every device.
    pub async fn load(store: S) -> Result<Arc<Self>, StoreError> {
        let dir = Arc::new(Self {
            store,
            maps: RwLock::default(),
            misses: Mutex::default(),
            generation: AtomicU64::new(0),
        });
        dir.reload_all().await?;
        Ok(dir)
    }

    async fn reload_all(&self) -> Result<(), StoreError> {
        let mut maps = Maps::default();
        for d in self.store.devices().await? {
            maps.insert(d);
        }
        let mut guard = self.maps.write().expect("directory lock poisoned");
        *guard = maps;
        self.generation.fetch_add(1, Ordering::SeqCst);
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
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.misses.lock().expect("miss lock poisoned").remove(id);
        Ok(())
    }

    fn recently_missed(&self, k: &str) -> bool {
        let misses = self.misses.lock().expect("miss lock poisoned");
        misses.get(k).is_some_and(|t| t.elapsed() < NEGATIVE_TTL)
    }

    /// Caches a database answer unless a notified change landed since `seen`.
    fn cache(&self, seen: u64, found: Option<&DeviceRecord>, miss_key: String) {
        let mut maps = self.maps.write().expect("directory lock poisoned");
        if self.generation.load(Ordering::SeqCst) != seen {
            return;
        }
        match found {
            Some(d) => maps.insert(d.clone()),
            None => self.remember_miss(miss_key),
        }
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
        let seen = self.generation.load(Ordering::SeqCst);
        let found = self.store.device(id).await?;
        self.cache(seen, found.as_ref(), id.as_str().to_owned());
        Ok(found.map(Arc::new))
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
        let seen = self.generation.load(Ordering::SeqCst);
        let found = self.store.device_by_owntracks(user, device).await?;
        self.cache(seen, found.as_ref(), miss_key);
        Ok(found.map(Arc::new))
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
