//! The engine's open alerts, indexed so that nothing the engine does per
//! input scans them all: how many fire (the gauges, after every transition)
//! and which belong to a device (every offline transition) are kept as the
//! map changes. A site of 50,000 devices reconnecting at once used to cost
//! a scan of every open alert per transition (quadratic), on the runtime
//! that also reads the QUIC sockets.

use std::collections::{HashMap, HashSet};

use outpost_proto::DeviceId;

use super::Key;
use crate::alerts::model::{Alert, AlertState};

#[derive(Default)]
pub struct OpenAlerts {
    map: HashMap<Key, Alert>,
    firing: usize,
    by_device: HashMap<DeviceId, HashSet<Key>>,
}

impl OpenAlerts {
    pub fn insert(&mut self, key: Key, a: Alert) -> Option<Alert> {
        if a.state == AlertState::Firing {
            self.firing += 1;
        }
        let device = key.1;
        let old = self.map.insert(key.clone(), a);
        match &old {
            Some(o) => self.forget_state(o),
            None => {
                self.by_device.entry(device).or_default().insert(key);
            }
        }
        old
    }

    pub fn remove(&mut self, key: &Key) -> Option<Alert> {
        let a = self.map.remove(key)?;
        self.forget_state(&a);
        if let Some(keys) = self.by_device.get_mut(&key.1) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_device.remove(&key.1);
            }
        }
        Some(a)
    }

    fn forget_state(&mut self, a: &Alert) {
        if a.state == AlertState::Firing {
            self.firing -= 1;
        }
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.map.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Alert)> {
        self.map.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &Alert> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Open alerts in state firing (the rest are pending).
    pub fn firing(&self) -> usize {
        self.firing
    }

    /// The keys of `device`'s open alerts.
    pub fn keys_of(&self, device: DeviceId) -> Vec<Key> {
        self.by_device
            .get(&device)
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(rule: &str, device: u64, state: AlertState) -> (Key, Alert) {
        let mut a = crate::alerts::eval::tests::alert(state, 0, 0);
        a.rule_id = rule.into();
        a.device = DeviceId(device);
        ((rule.into(), DeviceId(device), String::new()), a)
    }

    /// The counts and the device index always agree with a scan of the map.
    fn check(o: &OpenAlerts) {
        let firing = o.values().filter(|a| a.state == AlertState::Firing).count();
        assert_eq!(o.firing(), firing);
        let mut devices: HashMap<DeviceId, usize> = HashMap::new();
        for k in o.keys() {
            *devices.entry(k.1).or_default() += 1;
        }
        assert_eq!(o.by_device.len(), devices.len());
        for (d, n) in devices {
            let mut keys = o.keys_of(d);
            keys.sort();
            let mut want: Vec<Key> = o.keys().filter(|k| k.1 == d).cloned().collect();
            want.sort();
            assert_eq!(keys, want);
            assert_eq!(keys.len(), n);
        }
    }

    #[test]
    fn counts_and_the_device_index_follow_inserts_replacements_and_removals() {
        let mut o = OpenAlerts::default();
        let (k1, a1) = alert("cpu", 1, AlertState::Pending);
        let (k2, a2) = alert("disk", 1, AlertState::Firing);
        let (k3, a3) = alert("cpu", 2, AlertState::Firing);
        assert!(o.insert(k1.clone(), a1.clone()).is_none());
        o.insert(k2.clone(), a2);
        o.insert(k3.clone(), a3);
        check(&o);
        assert_eq!((o.len(), o.firing()), (3, 2));
        assert_eq!(o.keys_of(DeviceId(1)).len(), 2);
        // Pending -> firing: the same key replaced.
        let mut fired = a1;
        fired.state = AlertState::Firing;
        assert!(o.insert(k1.clone(), fired).is_some());
        check(&o);
        assert_eq!((o.len(), o.firing()), (3, 3));
        // Taken out (as the engine does before a decision) and not put back.
        assert_eq!(o.remove(&k2).map(|a| a.state), Some(AlertState::Firing));
        assert!(o.remove(&k2).is_none(), "a second removal finds nothing");
        check(&o);
        o.remove(&k1);
        check(&o);
        assert!(o.keys_of(DeviceId(1)).is_empty());
        assert_eq!((o.len(), o.firing()), (1, 1));
        o.remove(&k3);
        check(&o);
        assert_eq!((o.len(), o.firing()), (0, 0));
        assert!(o.by_device.is_empty(), "no empty device entries are kept");
    }
}
