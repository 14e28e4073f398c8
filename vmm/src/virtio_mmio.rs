//! The virtio-mmio transport (virtio 1.2 4.2 "Virtio Over MMIO", modern interface only) shared by
//! the virtio device models: the register file, feature negotiation, the device status rules and
//! the split virtqueues ([`SplitQueue`]). A device model owns a [`Transport`], answers its own
//! configuration space (offsets from 0x100) and does the work its queues' notifications ask for.
//!
//! A driver that breaks a rule of the specification puts the device in DEVICE_NEEDS_RESET with a
//! configuration change interrupt (virtio 1.2 2.1.2): the device stops using its queues until a
//! reset, and the first broken rule is kept for the host's log.

use super::virtqueue::{Area, SplitQueue, Violation};
use alloc::vec::Vec;

/// VIRTIO_F_VERSION_1: every device offers it and a driver must take it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Where the device-specific configuration space starts.
pub const CONFIG_SPACE: u64 = 0x100;
/// Bytes of a device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
// Device status bits (virtio 1.2 2.1).
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;
/// ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK and FAILED: the bits a driver sets.
const STATUS_DRIVER_BITS: u32 = 1 | 2 | 4 | 8 | 0x80;
/// Interrupt status bits: a used buffer, a configuration change.
const INT_USED: u32 = 1;
const INT_CONFIG: u32 = 2;

/// What a register write meant to the device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None,
    /// The driver reset the device: the model forgets its requests in progress.
    Reset,
    /// Queue `n` was enabled or disabled: the model forgets what it had taken from it.
    QueueChanged(usize),
    /// The write broke a rule: the device needs a reset and stops using its queues (the model
    /// forgets what it had taken from them).
    Broken,
}

/// The transport's registers and queues.
pub struct Transport {
    device_id: u32,
    offered: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    queues: Vec<SplitQueue>,
    /// Queues notified since the model last looked (bit per queue).
    notified: u64,
    interrupt_status: u32,
    config_generation: u32,
    /// The first rule the guest's driver broke, for the host's log (given once per device).
    notice: Option<&'static str>,
    noticed: bool,
}

impl Transport {
    /// A device of type `device_id` offering `features` (VERSION_1 is added) with one queue of
    /// each size in `queue_sizes` (at most 64 queues).
    pub fn new(device_id: u32, features: u64, queue_sizes: &[u16]) -> Self {
        Transport {
            device_id,
            offered: features | VIRTIO_F_VERSION_1,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            queue_sel: 0,
            queues: queue_sizes.iter().take(64).map(|&n| SplitQueue::new(n)).collect(),
            notified: 0,
            interrupt_status: 0,
            config_generation: 0,
            notice: None,
            noticed: false,
        }
    }

    /// The features both sides agreed on (valid once the driver set FEATURES_OK).
    pub fn negotiated(&self) -> u64 {
        self.driver_features & self.offered
    }

    /// Whether the device works on its queues: the driver is ready and broke no rule.
    pub fn live(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & (STATUS_NEEDS_RESET | STATUS_FAILED) == 0
    }

    /// Queue `n`.
    pub fn queue(&mut self, n: usize) -> Option<&mut SplitQueue> {
        self.queues.get_mut(n)
    }

    /// Whether queue `n` was notified since the last call (and forgets it).
    pub fn take_notified(&mut self, n: usize) -> bool {
        let bit = 1u64.checked_shl(n as u32).unwrap_or(0);
        let was = self.notified & bit != 0;
        self.notified &= !bit;
        was
    }

    /// Queue `n` is to be looked at again at the next service (work left on it).
    pub fn renotify(&mut self, n: usize) {
        self.notified |= 1u64.checked_shl(n as u32).unwrap_or(0);
    }

    /// The device put buffers on a used ring.
    pub fn used(&mut self) {
        self.interrupt_status |= INT_USED;
    }

    /// The device's configuration space changed (a link went up or down).
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt_status |= INT_CONFIG;
    }

    /// Whether the device's interrupt line is asserted.
    pub fn interrupt(&self) -> bool {
        self.interrupt_status != 0
    }

    /// What the guest's driver did wrong first, once.
    pub fn take_notice(&mut self) -> Option<&'static str> {
        self.notice.take()
    }

    /// The driver broke a rule: the device stops using its queues until a reset.
    pub fn needs_reset(&mut self, v: Violation) {
        if self.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt_status |= INT_CONFIG;
        if !self.noticed {
            self.noticed = true;
            self.notice = Some(v.0);
        }
    }

    fn reset(&mut self) {
        self.driver_features = 0;
        self.status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt_status = 0;
        self.notified = 0;
    }

    fn selected(&self) -> Option<&SplitQueue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// A register read below the configuration space; `None` for the configuration space.
    pub fn read(&self, offset: u64) -> Option<u32> {
        Some(match offset {
            0x000 => u32::from_le_bytes(*b"virt"),
            0x004 => 2, // version: modern
            0x008 => self.device_id,
            0x00c => 0x4d45, // vendor ID ("EM")
            0x010 => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            0x034 => self.selected().map_or(0, |q| u32::from(q.max())),
            0x044 => self.selected().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x0fc => self.config_generation,
            o if o >= CONFIG_SPACE => return None,
            _ => 0,
        })
    }

    /// A write to the device status register (virtio 1.2 2.1, 3.1.1): 0 resets; otherwise the
    /// driver may only add bits, FEATURES_OK only for offered features including VERSION_1, and
    /// DRIVER_OK only after FEATURES_OK.
    fn set_status(&mut self, v: u32) -> Event {
        if v == 0 {
            self.reset();
            return Event::Reset;
        }
        let old = self.status & !STATUS_NEEDS_RESET;
        if v & old != old {
            self.needs_reset(Violation("the driver cleared device status bits without a reset"));
            return Event::Broken;
        }
        let mut s = v & STATUS_DRIVER_BITS;
        if s & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && (self.driver_features & !self.offered != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0)
        {
            s &= !STATUS_FEATURES_OK;
        }
        if s & STATUS_DRIVER_OK != 0 && s & STATUS_FEATURES_OK == 0 {
            self.needs_reset(Violation("the driver set DRIVER_OK before FEATURES_OK"));
            return Event::Broken;
        }
        self.status = s | (self.status & STATUS_NEEDS_RESET);
        Event::None
    }

    /// A register write below the configuration space (aligned, 32 bits).
    pub fn write(&mut self, offset: u64, v: u32) -> Event {
        let sel = self.queue_sel as usize;
        let result = match offset {
            0x014 => {
                self.device_features_sel = v;
                Ok(Event::None)
            }
            0x020 if self.status & STATUS_FEATURES_OK != 0 => {
                Err(Violation("the driver changed its features after FEATURES_OK"))
            }
            0x020 => {
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
                Ok(Event::None)
            }
            0x024 => {
                self.driver_features_sel = v;
                Ok(Event::None)
            }
            0x030 => {
                self.queue_sel = v;
                Ok(Event::None)
            }
            0x038 => self.queues.get_mut(sel).map_or(Ok(Event::None), |q| q.set_num(v).map(|()| Event::None)),
            0x044 => match self.queues.get_mut(sel) {
                Some(q) => {
                    let was = q.ready();
                    let r = q.set_ready(v);
                    let changed = q.ready() != was;
                    r.map(|()| if changed { Event::QueueChanged(sel) } else { Event::None })
                }
                None => Ok(Event::None),
            },
            0x050 => {
                // Notifications before DRIVER_OK or for a queue the device lacks are ignored.
                if (v as usize) < self.queues.len() && self.live() {
                    self.renotify(v as usize);
                }
                Ok(Event::None)
            }
            0x064 => {
                self.interrupt_status &= !v;
                Ok(Event::None)
            }
            0x070 => Ok(self.set_status(v)),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                let area = match offset {
                    0x080 | 0x084 => Area::Descriptors,
                    0x090 | 0x094 => Area::Driver,
                    _ => Area::Device,
                };
                let high = offset & 4 != 0;
                self.queues
                    .get_mut(sel)
                    .map_or(Ok(Event::None), |q| q.set_addr(area, high, v).map(|()| Event::None))
            }
            _ => Ok(Event::None),
        };
        result.unwrap_or_else(|v| {
            self.needs_reset(v);
            Event::Broken
        })
    }
}

/// Reads `data.len()` bytes at `offset` of a 32-bit register file (`reg` answers aligned
/// offsets), across registers for reads of the configuration space wider than one.
pub fn read_bytes(offset: u64, data: &mut [u8], reg: impl Fn(u64) -> u32) {
    if let (0, Ok(word)) = (offset & 3, <&mut [u8; 4]>::try_from(&mut *data)) {
        *word = reg(offset).to_le_bytes();
        return;
    }
    for (i, b) in data.iter_mut().enumerate() {
        let at = offset.saturating_add(i as u64);
        *b = reg(at & !3).to_le_bytes().get((at & 3) as usize).copied().unwrap_or(0);
    }
}

/// The value of an aligned 32-bit register write, or `None` for any other access (virtio 1.2
/// 4.2.2.2: the transport's registers take aligned 32-bit writes only).
pub fn write_value(offset: u64, data: &[u8]) -> Option<u32> {
    if offset & 3 != 0 {
        return None;
    }
    <[u8; 4]>::try_from(data).ok().map(u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiated(t: &mut Transport, features: u64) {
        t.write(0x070, 1 | 2);
        t.write(0x024, 0);
        t.write(0x020, features as u32);
        t.write(0x024, 1);
        t.write(0x020, (features >> 32) as u32);
        t.write(0x070, 1 | 2 | 8);
    }

    #[test]
    fn registers_identify_the_device_and_select_queues() {
        let mut t = Transport::new(1, 1 << 5, &[256, 128]);
        assert_eq!(t.read(0x000), Some(0x7472_6976));
        assert_eq!(t.read(0x008), Some(1));
        assert_eq!(t.read(0x010), Some(1 << 5));
        t.write(0x014, 1);
        assert_eq!(t.read(0x010), Some(1), "VERSION_1 in the high word");
        assert_eq!(t.read(0x034), Some(256));
        t.write(0x030, 1);
        assert_eq!(t.read(0x034), Some(128));
        t.write(0x030, 2);
        assert_eq!(t.read(0x034), Some(0), "no third queue");
        assert_eq!(t.read(0x100), None, "configuration space is the device's");
    }

    #[test]
    fn features_status_and_notifications_follow_the_specification() {
        let mut t = Transport::new(1, 1 << 5, &[16, 16]);
        // Without VERSION_1 FEATURES_OK does not stick.
        t.write(0x070, 1 | 2);
        t.write(0x020, 1 << 5);
        t.write(0x070, 1 | 2 | 8);
        assert_eq!(t.read(0x070), Some(3));
        assert_eq!(t.write(0x070, 0), Event::Reset);
        negotiated(&mut t, VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(t.read(0x070), Some(11));
        assert_eq!(t.negotiated(), VIRTIO_F_VERSION_1 | 1 << 5);
        // A notification before DRIVER_OK is ignored.
        t.write(0x050, 1);
        assert!(!t.take_notified(1));
        t.write(0x070, 1 | 2 | 8 | 4);
        assert!(t.live());
        t.write(0x050, 1);
        t.write(0x050, 7);
        assert!(t.take_notified(1) && !t.take_notified(1) && !t.take_notified(7));
        // Features after FEATURES_OK: needs reset, with a configuration interrupt and a notice.
        assert_eq!(t.write(0x020, 0), Event::Broken);
        assert!(!t.live() && t.interrupt());
        assert_eq!(t.read(0x070).unwrap() & 0x40, 0x40);
        assert!(t.take_notice().is_some() && t.take_notice().is_none());
        assert_eq!(t.write(0x070, 0), Event::Reset);
        assert!(!t.interrupt());
    }

    #[test]
    fn enabling_a_queue_is_an_event_and_interrupts_are_acknowledged() {
        let mut t = Transport::new(1, 0, &[16, 16]);
        t.write(0x030, 1);
        t.write(0x038, 16);
        assert_eq!(t.write(0x044, 1), Event::QueueChanged(1));
        assert_eq!(t.write(0x044, 1), Event::None);
        t.used();
        t.config_changed();
        assert_eq!((t.read(0x060), t.read(0x0fc)), (Some(3), Some(1)));
        t.write(0x064, 1);
        assert_eq!(t.read(0x060), Some(2));
    }

    #[test]
    fn register_accesses_of_other_sizes() {
        let mut b = [0u8; 2];
        read_bytes(0x102, &mut b, |o| if o == 0x100 { 0x1122_3344 } else { 0 });
        assert_eq!(b, [0x22, 0x11]);
        let mut six = [0u8; 6];
        read_bytes(0x100, &mut six, |o| if o == 0x100 { 0x0403_0201 } else { 0x0605 });
        assert_eq!(six, [1, 2, 3, 4, 5, 6]);
        assert_eq!(write_value(0x50, &[1, 0, 0, 0]), Some(1));
        assert_eq!(write_value(0x51, &[1, 0, 0, 0]), None);
        assert_eq!(write_value(0x50, &[1, 0]), None);
    }
}
