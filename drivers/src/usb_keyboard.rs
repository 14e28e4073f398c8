//! USB keyboards in the HID boot protocol (HID 1.11 appendix B.1), on the xHCI driver: the DCUI's
//! local keyboard on servers without PS/2.
//!
//! After SET_CONFIGURATION, SET_PROTOCOL(boot) and SET_IDLE(0) (reports only on change), one
//! interrupt IN transfer is kept queued; each poll collects a completed report, hands it to the
//! [`HidKeyboard`] decoder and queues the next. A stalled endpoint is cleared; a keyboard whose
//! transfers keep failing (unplugged, broken) is given up with a log line and the rest of the
//! system carries on.

use super::usb::{set_configuration, Enumerated};
use super::xhci::{EndpointSpec, TransferError, Xhci, EP_INTERRUPT_IN};
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use ember_hw::keyboard::{HidKeyboard, Layout};
use ember_hw::keys::Key;
use ember_hw::usb::{self, BootKeyboard, HID_SET_IDLE, HID_SET_PROTOCOL};
use ember_platform::arch::x86_64::dma::DmaBuffer;

/// Failed transfers in a row after which the keyboard is given up.
const MAX_ERRORS: u32 = 3;

pub struct UsbKeyboard {
    hc: Rc<RefCell<Xhci>>,
    slot: u8,
    endpoint: u8,
    report_len: usize,
    buf: DmaBuffer,
    /// The queued transfer's TRB.
    pending: Option<u64>,
    errors: u32,
    /// Why the keyboard was given up.
    failed: Option<String>,
    pub decoder: HidKeyboard,
    pub name: String,
}

/// Binds the enumerated device when it has a boot keyboard interface.
pub fn attach(hc: &Rc<RefCell<Xhci>>, e: &Enumerated) -> Result<Option<UsbKeyboard>, String> {
    let Some(k) = usb::find_boot_keyboard(&e.config)? else { return Ok(None) };
    let BootKeyboard { configuration_value, interface, endpoint, interval } = k;
    let mut c = hc.borrow_mut();
    set_configuration(&mut c, e.slot, configuration_value)?;
    let class_request = |request: u8, value: u16| {
        let [v0, v1] = value.to_le_bytes();
        [0x21, request, v0, v1, interface, 0, 0, 0]
    };
    c.control(e.slot, class_request(HID_SET_PROTOCOL, 0), None)
        .map_err(|e| format!("SET_PROTOCOL(boot): {e}"))?;
    // SET_IDLE is optional for keyboards that repeat reports on their own; a stall is no error.
    if let Err(err) = c.control(e.slot, class_request(HID_SET_IDLE, 0), None) {
        kprintln!("ember: USB keyboard: SET_IDLE not accepted ({err}); reports may repeat");
    }
    let address = 0x80 | endpoint.number;
    let spec = EndpointSpec {
        address,
        kind: EP_INTERRUPT_IN,
        max_packet: endpoint.max_packet_size,
        interval: usb::xhci_interrupt_interval(e.speed, interval),
    };
    c.configure_endpoints(e.slot, &[spec])?;
    drop(c);
    Ok(Some(UsbKeyboard {
        hc: hc.clone(),
        slot: e.slot,
        endpoint: address,
        report_len: (endpoint.max_packet_size as usize).min(64),
        buf: DmaBuffer::new(64).ok_or("out of memory")?,
        pending: None,
        errors: 0,
        failed: None,
        decoder: HidKeyboard::new(Layout::Us),
        name: format!("USB keyboard on port {}", e.port),
    }))
}

impl UsbKeyboard {
    /// Collects a report if one has come, and any key repeat that is due; queues the next transfer.
    pub fn poll(&mut self, now_ms: u64, keys: &mut Vec<Key>) {
        if self.failed.is_some() {
            return;
        }
        let mut hc = self.hc.borrow_mut();
        if let Some(trb) = self.pending {
            match hc.interrupt_poll(self.slot, self.endpoint, self.report_len, trb) {
                None => {}
                Some(Ok(n)) => {
                    self.pending = None;
                    self.errors = 0;
                    let mut report = [0u8; 64];
                    self.buf.read(0, &mut report[..n.min(64)]);
                    keys.extend(self.decoder.report(&report[..n.min(64)], now_ms));
                }
                Some(Err(e)) => {
                    self.pending = None;
                    self.errors += 1;
                    let cleared = match e {
                        TransferError::Stall => hc.clear_stall(self.slot, self.endpoint).err(),
                        TransferError::Other(_) => None,
                    };
                    if self.errors >= MAX_ERRORS || cleared.is_some() {
                        let why = cleared.map_or_else(|| e.to_string(), |c| format!("{e}; {c}"));
                        kprintln!("ember: WARNING: {}: given up: {why}", self.name);
                        self.failed = Some(why);
                        return;
                    }
                }
            }
        }
        if self.pending.is_none() {
            match hc.interrupt_in(self.slot, self.endpoint, &self.buf, self.report_len) {
                Ok(trb) => self.pending = Some(trb),
                Err(e) => {
                    kprintln!("ember: WARNING: {}: given up: {e}", self.name);
                    self.failed = Some(e);
                    return;
                }
            }
        }
        keys.extend(self.decoder.tick(now_ms).into_iter().flatten());
    }
}
