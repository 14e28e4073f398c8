//! virtio-net (virtio 1.2 section 5.1) through the `virtio-drivers` crate's PCI transport.
//!
//! The crate owns the virtqueues; this module maps the BARs, enables the function and adapts the
//! device to the management plane's [`Nic`] trait by copying frames. Link state: the crate does not
//! negotiate VIRTIO_NET_F_STATUS, so the link is reported up, as the virtio spec says a device without
//! that feature must be treated.

use ember_hw::mm::frames::FrameAllocator;
use ember_hw::nic::Nic;
use ember_platform::arch::x86_64::dma::EmberHal;
use ember_platform::firmware::pcie::PciFunction;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::pci::PciTransport;

const QUEUE_SIZE: usize = 64;
const RX_BUFFER_LEN: usize = 2048;

pub struct VirtioNet {
    dev: VirtIONet<EmberHal, PciTransport, QUEUE_SIZE>,
}

impl VirtioNet {
    pub fn new(f: &PciFunction, frames: &mut FrameAllocator) -> Result<Self, &'static str> {
        let transport = super::virtio_pci_transport(f, frames)?;
        let dev = VirtIONet::new(transport, RX_BUFFER_LEN).map_err(|_| "virtio-net initialisation failed")?;
        Ok(VirtioNet { dev })
    }
}

impl Nic for VirtioNet {
    fn mac(&self) -> [u8; 6] {
        self.dev.mac_address()
    }

    fn link_up(&mut self) -> bool {
        true
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let rx = self.dev.receive().ok()?;
            let packet = rx.packet();
            let n = packet.len();
            let fits = n <= buf.len();
            if fits {
                buf[..n].copy_from_slice(packet);
            }
            // A buffer that cannot be recycled is lost to the queue; the device keeps the others.
            let _ = self.dev.recycle_rx_buffer(rx);
            if fits {
                return Some(n);
            }
        }
    }

    fn can_transmit(&mut self) -> bool {
        self.dev.can_send()
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        let mut tx = self.dev.new_tx_buffer(frame.len());
        tx.packet_mut().copy_from_slice(frame);
        self.dev.send(tx).is_ok()
    }
}
