//! Fuzz target for what a serial terminal or a local keyboard sends the local console: bytes through
//! the escape-sequence decoder, and as PS/2 scan codes and USB boot reports through the German
//! layout, into the DCUI menu, which is drawn at a tiny size after every key and time-out and at
//! 80x24 at the end of the input. Every other byte of input is a time step, so lone-Esc time-outs
//! and the idle time-out are exercised too; login checks succeed when the password typed is
//! `ok-pass`; the management network forms validate whatever is typed into them. Any panic is a finding.
#![no_main]

use ember_dcui::menu::{Action, Menu, View};
use ember_hw::keyboard::{HidKeyboard, Layout, Ps2Keyboard};
use ember_hw::keys::KeyDecoder;
use ember_storage::netconfig::ManagementConfig;
use libfuzzer_sys::fuzz_target;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;

fuzz_target!(|data: &[u8]| {
    let support = vec![("Serial Number".to_string(), "S1".to_string())];
    let logs: Vec<String> = (0..30).map(|i| format!("line {i}")).collect();
    let network = ManagementConfig::default();
    let ipv6 = vec!["fe80::5054:ff:fe00:10/64".to_string()];
    let nics = vec![("vmnic0".to_string(), "52:54:00:00:00:10".to_string(), true)];
    let view = View {
        hostname: "esx1",
        keyboard: "US Default",
        shell: false,
        ssh: true,
        shell_timeout: 0,
        shell_idle_timeout: 15,
        dcui_timeout: 10,
        support: &support,
        logs: &logs,
        network: &network,
        dns_search: &[],
        nics: &nics,
        tests: &[],
        ipv6_addresses: &ipv6,
    };
    let mut decoder = KeyDecoder::new();
    let mut ps2 = Ps2Keyboard::new(Layout::German);
    let mut usb = HidKeyboard::new(Layout::German);
    let mut menu = Menu::new();
    let mut now = 0u64;
    for (i, pair) in data.chunks(2).enumerate() {
        now += pair.get(1).map_or(1, |&t| u64::from(t) * 50);
        let mut keys: Vec<_> =
            decoder.feed(pair[0], now).into_iter().flatten().chain(decoder.tick(now)).collect();
        keys.extend(ps2.feed(pair[0]).into_iter().flatten());
        if i % 4 == 3 {
            keys.extend(usb.report(&data[2 * i - 6..(2 * i + 2).min(data.len())], now));
        }
        keys.extend(usb.tick(now).into_iter().flatten());
        // `render` is a pure function of the menu's state and the view, so a pass in which no key
        // arrived and no time-out fired would draw exactly what the previous pass drew: skip it.
        let mut changed = i == 0 || !keys.is_empty();
        for key in keys {
            if let Some(Action::CheckLogin(pw)) = menu.key(key, &view, now) {
                let _ = menu.login_result(pw == "ok-pass", now);
            }
        }
        changed |= menu.tick(now, 10);
        if changed {
            draw(&menu, &view, 13, 4);
        }
    }
    // Every state is the final state of the input that stops there, so drawing the full screen once
    // per input draws it for every state the fuzzer reaches, without paying for it after each key.
    draw(&menu, &view, 80, 24);
});

fn draw(menu: &Menu, view: &View<'_>, width: u16, height: u16) {
    let area = Rect::new(0, 0, width, height);
    let mut buf = Buffer::empty(area);
    menu.render(view, area, &mut buf);
}
