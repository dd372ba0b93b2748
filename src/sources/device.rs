//! The device as a source: its lifecycle (`device-provisioned` on the very first start,
//! `set-status`, `decommission`, `provision`) and its inventory, collected at start-up, every
//! `inventory.interval` and on request, and emitted only when it changed. Every change and the
//! event announcing it are committed together (see [`Transition`]), so a crash can neither lose
//! an announcement nor repeat one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::control::{Answer, Op, Refusal, Request};
use super::inventory::{self, builtin};
use crate::config::{self, Config};
use crate::event;
use crate::outbox::{AppendError, Appended, DECOMMISSIONED, DeviceFacts, Fact, Outbox, Transition};
use crate::protocol::Done;

/// The lifecycle value of a provisioned device.
const PROVISIONED: &str = "provisioned";

/// The device source: owns the lifecycle and the inventory.
pub struct DeviceSource {
    outbox: Outbox,
    device_id: String,
    device: config::Device,
    inventory: config::Inventory,
    facts: DeviceFacts,
    cancel: Arc<AtomicBool>,
}

/// Checks a status given to `set-status`.
pub fn check_status(status: &str) -> Result<(), Refusal> {
    let mut chars = status.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
        && status.len() <= 32;
    if !ok {
        return Err(Refusal::new(
            "invalid",
            "a status matches ^[a-z][a-z0-9_-]{0,31}$ (for example accepted, pending, rejected)",
        ));
    }
    if status == DECOMMISSIONED {
        return Err(Refusal::new(
            "invalid",
            "use `edgehook decommission` to decommission the device",
        ));
    }
    Ok(())
}

impl DeviceSource {
    /// The source for the device `device_id`, as the outbox last knew it.
    pub fn new(outbox: Outbox, device_id: String, config: &Config, facts: DeviceFacts) -> Self {
        DeviceSource {
            outbox,
            device_id,
            device: config.device.clone(),
            inventory: config.inventory.clone(),
            facts,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Raised at shutdown: a running inventory script is killed at once.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    fn decommissioned(&self) -> bool {
        self.facts.lifecycle.as_deref() == Some(DECOMMISSIONED)
    }

    /// On the very first start, announces the device with `device-provisioned`.
    pub async fn start(&mut self) {
        if self.facts.lifecycle.is_some() {
            return;
        }
        match self.provision(true).await {
            Ok(Some(a)) => {
                log::info!(event_id = a.id.as_str(); "Device {} provisioned", self.device_id)
            }
            Ok(None) => {}
            Err(e) => log::error!(
                "Cannot store device-provisioned ({e}); it is announced at the next start"
            ),
        }
    }

    /// Serves control requests and collects the inventory until `shutdown`.
    /// `configs` brings each config a reload applied.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut configs: watch::Receiver<Option<Arc<Config>>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if !self.decommissioned() {
            let _ = self.refresh_inventory().await;
        }
        let mut tick = tokio::time::interval_at(
            crate::config::units::later_tokio(tokio::time::Instant::now(), self.inventory.interval),
            self.inventory.interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    if !self.decommissioned() {
                        let _ = self.refresh_inventory().await;
                    }
                }
                Ok(()) = configs.changed() => {
                    let Some(config) = configs.borrow_and_update().clone() else { continue };
                    self.reload(&config, &mut tick);
                    // A sink added by the reload gets what was never taken by one.
                    self.start().await;
                    if !self.decommissioned() {
                        let _ = self.refresh_inventory().await;
                    }
                }
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    let answer = self.handle(request.op).await;
                    let _ = request.reply.send(answer);
                }
            }
        }
    }

    fn reload(&mut self, config: &Config, tick: &mut tokio::time::Interval) {
        self.device = config.device.clone();
        if config.inventory.interval != self.inventory.interval {
            *tick = tokio::time::interval_at(
                crate::config::units::later_tokio(
                    tokio::time::Instant::now(),
                    config.inventory.interval,
                ),
                config.inventory.interval,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        self.inventory = config.inventory.clone();
    }

    async fn handle(&mut self, op: Op) -> Answer {
        match op {
            Op::SetStatus(status) => {
                check_status(&status)?;
                if self.decommissioned() {
                    return Err(decommissioned());
                }
                let data = json!({"id": self.device_id, "status": status});
                let t = Transition {
                    fact: Fact::Status,
                    value: status.clone(),
                    only_if_unset: false,
                    only_if_stored: false,
                    also: Vec::new(),
                    event: event::build_value(
                        None,
                        "device-status-changed",
                        &data,
                        SystemTime::now(),
                    ),
                };
                let done = self.outbox.transition(t).await.map_err(refusal)?;
                if let Some(a) = &done {
                    self.facts.status = Some(status.clone());
                    log::info!(event_id = a.id.as_str(); "Device status is now {status}");
                }
                Ok(changed(done))
            }
            Op::Decommission => {
                let data = json!({"id": self.device_id});
                let t = Transition {
                    fact: Fact::Lifecycle,
                    value: DECOMMISSIONED.into(),
                    only_if_unset: false,
                    only_if_stored: false,
                    // The inventory is forgotten, so `provision` announces it again in full.
                    also: vec![
                        (Fact::Status, DECOMMISSIONED.into()),
                        (Fact::Inventory, String::new()),
                    ],
                    event: event::build_value(
                        None,
                        "device-decommissioned",
                        &data,
                        SystemTime::now(),
                    ),
                };
                let done = self.outbox.transition(t).await.map_err(refusal)?;
                if let Some(a) = &done {
                    self.facts.lifecycle = Some(DECOMMISSIONED.into());
                    self.facts.status = Some(DECOMMISSIONED.into());
                    log::info!(event_id = a.id.as_str(); "Device decommissioned: sources stopped, local events refused, the backlog still drains");
                }
                Ok(changed(done))
            }
            Op::Provision => {
                let done = self.provision(false).await.map_err(refusal)?;
                if let Some(a) = &done {
                    log::info!(event_id = a.id.as_str(); "Device provisioned again");
                    let _ = self.refresh_inventory().await;
                }
                Ok(changed(done))
            }
            Op::InventoryRefresh => {
                if self.decommissioned() {
                    return Err(decommissioned());
                }
                self.refresh_inventory().await.map(changed).map_err(refusal)
            }
            // Handled by the daemon, never sent here.
            Op::ReloadFiles | Op::Redeliver(_) | Op::Resume(_) => Ok(Done::default()),
        }
    }

    async fn provision(&mut self, first: bool) -> Result<Option<Appended>, AppendError> {
        let data = provisioned_data(
            &self.device_id,
            &self.facts,
            &identity_data(&self.device, &self.device_id, Path::new("/")),
            SystemTime::now(),
        );
        let t = Transition {
            fact: Fact::Lifecycle,
            value: PROVISIONED.into(),
            only_if_unset: first,
            // The first announcement waits for a sink that takes it.
            only_if_stored: first,
            also: vec![(Fact::Status, "accepted".into())],
            event: event::build_value(None, "device-provisioned", &data, SystemTime::now()),
        };
        let done = self.outbox.transition(t).await?;
        if done.is_some() {
            self.facts.lifecycle = Some(PROVISIONED.into());
            self.facts.status = Some("accepted".into());
        }
        Ok(done)
    }

    /// Collects the inventory and emits it when it differs from the last one emitted.
    async fn refresh_inventory(&mut self) -> Result<Option<Appended>, AppendError> {
        let (settings, device, cancel) = (
            self.inventory.clone(),
            self.device.clone(),
            self.cancel.clone(),
        );
        let collected =
            tokio::task::spawn_blocking(move || inventory::collect(&settings, &device, &cancel))
                .await
                .map_err(|e| AppendError::Storage(format!("inventory collection failed: {e}")))?;
        for w in &collected.warnings {
            log::warn!("{}", capitalise(w));
        }
        if self.cancel.load(Ordering::Relaxed) || collected.inventory.is_empty() {
            return Ok(None);
        }
        let data = collected
            .inventory
            .event_data(Some(&self.device_id), self.device.tenant_id.as_deref());
        let t = Transition {
            fact: Fact::Inventory,
            value: serde_json::to_string(&data.inventory).expect("inventory serialises"),
            only_if_unset: false,
            only_if_stored: true,
            also: Vec::new(),
            event: event::build_value(None, "devices-inventory-changed", &data, SystemTime::now()),
        };
        match self.outbox.transition(t).await {
            Ok(Some(a)) => {
                log::info!(event_id = a.id.as_str(); "Inventory changed ({} attributes); event {}", collected.inventory.attributes.len(), a.id);
                Ok(Some(a))
            }
            Ok(None) => {
                log::debug!("Inventory unchanged");
                Ok(None)
            }
            Err(e) => {
                log::error!("Cannot store devices-inventory-changed: {e}");
                Err(e)
            }
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}

fn changed(done: Option<Appended>) -> Done {
    Done {
        changed: Some(done.is_some()),
        id: done.map(|a| a.id),
        ..Done::default()
    }
}

fn decommissioned() -> Refusal {
    Refusal::new(
        "decommissioned",
        "the device is decommissioned; `edgehook provision` undoes it",
    )
}

fn refusal(e: AppendError) -> Refusal {
    match e {
        AppendError::Full => Refusal::new("full", "the outbox is full"),
        AppendError::NoSpace => Refusal::new("full", super::ingest::NO_SPACE),
        AppendError::Conflict => Refusal::new("conflict", super::ingest::CONFLICT),
        AppendError::Decommissioned => decommissioned(),
        // The detail is in the daemon's log.
        AppendError::Storage(_) => Refusal::new("internal", "storage error: nothing was stored"),
    }
}

/// `identity_data`: `device.identity`, else the primary MAC address as Mender's default
/// identity script gives it, else the device id when the device has no Ethernet interface.
pub fn identity_data(device: &config::Device, device_id: &str, root: &Path) -> Value {
    if let Some(identity) = &device.identity {
        return json!(identity);
    }
    match builtin::primary_mac(root) {
        Some(mac) => json!({"mac": mac}),
        None => json!({"device_id": device_id}),
    }
}

/// The `data` of `device-provisioned`: the whole device, as Mender's device API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProvisionedData {
    /// The device id.
    pub id: String,
    /// Always `accepted`.
    pub status: &'static str,
    /// The device's one authentication set.
    pub auth_sets: Vec<AuthSet>,
    /// When edgehook first knew the device (RFC 3339).
    pub created_ts: String,
}

/// An authentication set of `device-provisioned`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuthSet {
    /// Generated once and kept, like the device id.
    pub id: String,
    /// The device id.
    pub device_id: String,
    /// `device.identity`, or the primary MAC.
    pub identity_data: Value,
    /// Always `accepted`.
    pub status: &'static str,
    /// When it was provisioned (RFC 3339).
    pub ts: String,
}

/// Builds the `data` of `device-provisioned`.
pub fn provisioned_data(
    device_id: &str,
    facts: &DeviceFacts,
    identity: &Value,
    now: SystemTime,
) -> ProvisionedData {
    ProvisionedData {
        id: device_id.to_string(),
        status: "accepted",
        auth_sets: vec![AuthSet {
            id: facts.auth_set_id.clone(),
            device_id: device_id.to_string(),
            identity_data: identity.clone(),
            status: "accepted",
            ts: humantime::format_rfc3339_millis(now).to_string(),
        }],
        created_ts: event::rfc3339_ms(facts.created_ms),
    }
}
