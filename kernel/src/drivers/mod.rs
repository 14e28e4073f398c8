//! Host device drivers, bound to PCIe functions found by the scan.
//!
//! NICs are named `vmnic0`, `vmnic1`, ... in PCI order (segment, bus, device, function), whatever
//! their driver, as ESXi names them.

pub mod e1000e;
pub mod virtio_net;

use crate::firmware::pcie::PciFunction;
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;
use ember_kernel::mm::frames::FrameAllocator;
use ember_net::mgmt::ManagedNic;
use ember_net::nic::Nic;

/// A driver's attempt to take a function: the NIC, or why not.
type Binding = Result<Box<dyn Nic>, &'static str>;

/// Binds a driver to every supported NIC and returns them named in PCI order.
pub fn probe_nics(functions: &[PciFunction], frames: &mut FrameAllocator) -> Vec<ManagedNic> {
    let mut nics = Vec::new();
    for f in functions {
        let bound: Option<(&'static str, Binding)> = match (f.vendor, f.device) {
            (0x1af4, 0x1000) | (0x1af4, 0x1041) => Some((
                "virtio-net",
                virtio_net::VirtioNet::new(f, frames).map(|n| Box::new(n) as Box<dyn Nic>),
            )),
            (0x8086, 0x10d3) => {
                Some(("e1000e", e1000e::E1000e::new(f, frames).map(|n| Box::new(n) as Box<dyn Nic>)))
            }
            _ => None,
        };
        match bound {
            None => {}
            Some((driver, Ok(nic))) => {
                let name = format!("vmnic{}", nics.len());
                let mut nic = nic;
                kprintln!(
                    "ember: {name}: {driver} at {}, MAC {}, link {}",
                    f.bdf,
                    ember_net::api::mac_string(&nic.mac()),
                    if nic.link_up() { "up" } else { "down" }
                );
                nics.push(ManagedNic { name, driver, nic });
            }
            Some((driver, Err(why))) => {
                kprintln!("ember: WARNING: {driver} at {} not usable: {why}", f.bdf);
            }
        }
    }
    if nics.is_empty() {
        kprintln!("ember: no supported NIC found (virtio-net, Intel 82574L e1000e)");
    }
    nics
}
