//! Ember's script interpreter for kickstart `%pre`, `%post` and `%firstboot` sections
//! (`--interpreter=busybox`, the default).
//!
//! Ember has no operating system underneath, so there is no BusyBox: a script is a list of
//! configuration commands in shell syntax, checked when the kickstart is read and carried out on the
//! host configuration. Every change it makes goes through the same validation as the API's.
//!
//! Shell syntax taken: one command per line or `;`-separated, `&&` and `||` lists, `#` comments,
//! `\` line continuation, single and double quotes, backslash escapes, `$NAME`/`${NAME}`/`$?`
//! expansion (a variable is one word; no field splitting or globbing), `NAME=value` and
//! `export NAME=value` assignments. Pipes, redirections, command substitution, background jobs,
//! `if`/`for`/`while`/`case`, functions and subshells are refused with the line they are on.
//!
//! Commands (`esxcli` may also be written `localcli`):
//! - `:`, `true`, `false`, `echo [-n] ...`, `exit [N]`, `set -e`/`set +e`, `sleep N` (returns at once:
//!   the configuration commands take effect in order, there is nothing to wait for);
//! - `esxcli system hostname set [--host|-H] [--domain|-d] [--fqdn|-f]`, `esxcli system hostname get`;
//! - `esxcli network ip dns server add|remove --server|-s IP` (`remove --all|-a`), `... list`;
//! - `esxcli network ip dns search add|remove --domain|-d NAME`, `... list`;
//! - `esxcli network ip interface ipv4 set --interface-name|-i vmk0 --type|-t dhcp|static
//!   [--ipv4|-I IP --netmask|-N MASK [--gateway|-g IP]]`;
//! - `esxcli network ip route ipv4 add --gateway|-g IP --network|-n default` (static addressing);
//! - `esxcli network vswitch standard portgroup set --portgroup-name|-p "Management Network"
//!   --vlan-id|-v N` (0 = untagged);
//! - `esxcli system settings keyboard layout set --layout|-l NAME`;
//! - `esxcli system settings advanced set --option|-o /UserVars/ESXiShellTimeOut |
//!   /UserVars/ESXiShellInteractiveTimeOut | /UserVars/DcuiTimeOut --int-value|-i SECONDS`
//!   (whole minutes, at most a day; 0 = never);
//! - `vim-cmd hostsvc/enable_ssh|disable_ssh|start_ssh|stop_ssh|enable_esx_shell|disable_esx_shell|
//!   start_esx_shell|stop_esx_shell` (Ember has one setting per service: start = enable).
//!
//! A command that fails (a bad value, say) changes nothing, prints why and has exit status 1; the
//! script goes on unless `set -e` is in force, and its exit status is its last command's, as in a
//! shell.

use crate::hostconfig::{HostConfig, MAX_SEARCH_SUFFIXES, MAX_TIMEOUT_MINUTES};
use crate::kickstart::KEYBOARD_LAYOUTS;
use crate::netconfig::{validate_hostname, Ipv4Mode, MAX_DNS_SERVERS};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::Ipv4Addr;

/// Longest script accepted.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
/// Most variables a script may set.
const MAX_VARIABLES: usize = 256;
/// Longest a command's words may grow by expansion, all together (a variable set from itself
/// cannot double without bound: `A=$A$A` stops with an error here).
pub const MAX_EXPANDED_BYTES: usize = 16 * 1024;
/// Most lines a script's output keeps (the rest is dropped, and the output says so).
pub const MAX_OUTPUT_LINES: usize = 512;

/// A piece of a word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// `$NAME` or `${NAME}`; `?` is the last exit status.
    Var(String),
}

type Word = Vec<Part>;

/// How a command joins the next one on its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// `;` or the end of the line.
    Then,
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    line: usize,
    words: Vec<Word>,
    join: Join,
}

/// A checked script, ready to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    commands: Vec<Command>,
}

/// A problem found while reading a script: the line (in the kickstart file) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub line: usize,
    pub message: String,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The script's exit status (its last command's, or `exit N`).
    pub status: i32,
    /// What it printed and why commands failed, each with its line (`line 12: ...`).
    pub output: Vec<String>,
    /// Commands carried out.
    pub commands: usize,
}

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Reads a script whose first line is line `first_line` of its file.
pub fn parse(body: &str, first_line: usize) -> Result<Script, ScriptError> {
    if body.len() > MAX_SCRIPT_BYTES {
        return Err(ScriptError {
            line: first_line,
            message: format!("the script is longer than {MAX_SCRIPT_BYTES} bytes"),
        });
    }
    let mut commands = Vec::new();
    let mut lines = body.lines().enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let line = first_line + i;
        // `\` at the end of a line continues the command on the next one.
        let mut text = String::from(raw);
        while text.ends_with('\\') && !text.ends_with("\\\\") {
            text.pop();
            match lines.next() {
                Some((_, more)) => text.push_str(more),
                None => break,
            }
        }
        parse_line(&text, line, &mut commands).map_err(|message| ScriptError { line, message })?;
    }
    for c in &commands {
        check_command(c).map_err(|message| ScriptError { line: c.line, message })?;
    }
    Ok(Script { commands })
}

/// Splits one logical line into commands.
fn parse_line(text: &str, line: usize, out: &mut Vec<Command>) -> Result<(), String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut words: Vec<Word> = Vec::new();
    let mut word: Word = Vec::new();
    let mut in_word = false;
    let push_text = |word: &mut Word, c: char| match word.last_mut() {
        Some(Part::Text(t)) => t.push(c),
        _ => word.push(Part::Text(String::from(c))),
    };
    let unsupported = |what: &str| Err(format!("{what} are not supported by Ember's script interpreter"));
    let end_command = |words: &mut Vec<Word>, join: Join, out: &mut Vec<Command>| -> Result<(), String> {
        if words.is_empty() {
            return if join == Join::Then {
                Ok(())
            } else {
                Err(String::from("`&&` or `||` without a command before it"))
            };
        }
        out.push(Command { line, words: core::mem::take(words), join });
        Ok(())
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(core::mem::take(&mut word));
                    in_word = false;
                }
                i += 1;
            }
            '#' if !in_word => break,
            ';' | '&' | '|' => {
                if in_word {
                    words.push(core::mem::take(&mut word));
                    in_word = false;
                }
                let next = chars.get(i + 1).copied();
                let join = match (c, next) {
                    (';', Some(';')) => return unsupported("`case` statements"),
                    (';', _) => Join::Then,
                    ('&', Some('&')) => Join::And,
                    ('|', Some('|')) => Join::Or,
                    ('&', _) => return unsupported("background jobs (`&`)"),
                    _ => return unsupported("pipes (`|`)"),
                };
                i += if join == Join::Then { 1 } else { 2 };
                end_command(&mut words, join, out)?;
                if join != Join::Then && chars[i..].iter().all(|c| c.is_whitespace()) {
                    return Err(format!(
                        "`{}` at the end of a line needs a command after it",
                        if join == Join::And { "&&" } else { "||" }
                    ));
                }
            }
            '>' | '<' => return unsupported("redirections"),
            '`' => return unsupported("command substitutions"),
            '(' | ')' => return unsupported("subshells and functions"),
            '\'' => {
                in_word = true;
                let close =
                    chars[i + 1..].iter().position(|&c| c == '\'').ok_or("unterminated single quote")?;
                let t: String = chars[i + 1..i + 1 + close].iter().collect();
                word.push(Part::Text(t));
                i += close + 2;
            }
            '"' => {
                in_word = true;
                word.push(Part::Text(String::new()));
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(String::from("unterminated double quote"));
                    };
                    match c {
                        '"' => {
                            i += 1;
                            break;
                        }
                        '\\' if matches!(chars.get(i + 1), Some('"' | '\\' | '$' | '`')) => {
                            push_text(&mut word, chars[i + 1]);
                            i += 2;
                        }
                        '$' => i = dollar(&chars, i, &mut word)?,
                        '`' => return unsupported("command substitutions"),
                        c => {
                            push_text(&mut word, c);
                            i += 1;
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.get(i + 1) {
                    Some(&n) => push_text(&mut word, n),
                    None => return Err(String::from("`\\` at the end of the script")),
                }
                i += 2;
            }
            '$' => {
                in_word = true;
                i = dollar(&chars, i, &mut word)?;
            }
            c => {
                in_word = true;
                push_text(&mut word, c);
                i += 1;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    end_command(&mut words, Join::Then, out)
}

/// Reads the expansion at `chars[i]` (a `$`) into `word`; returns the index after it.
fn dollar(chars: &[char], i: usize, word: &mut Word) -> Result<usize, String> {
    match chars.get(i + 1) {
        Some('(') => {
            Err(String::from("command substitutions are not supported by Ember's script interpreter"))
        }
        Some('?') => {
            word.push(Part::Var(String::from("?")));
            Ok(i + 2)
        }
        Some('{') => {
            let close = chars[i + 2..].iter().position(|&c| c == '}').ok_or("`${` without `}`")?;
            let name: String = chars[i + 2..i + 2 + close].iter().collect();
            if !is_name(&name) {
                return Err(format!("`${{{name}}}`: only plain variable names can be expanded"));
            }
            word.push(Part::Var(name));
            Ok(i + close + 3)
        }
        Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
            let len = chars[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').count();
            word.push(Part::Var(chars[i + 1..i + 1 + len].iter().collect()));
            Ok(i + 1 + len)
        }
        // A lone `$` is itself.
        _ => {
            match word.last_mut() {
                Some(Part::Text(t)) => t.push('$'),
                _ => word.push(Part::Text(String::from("$"))),
            }
            Ok(i + 1)
        }
    }
}

/// The literal text of a word, if it has no expansions.
fn literal(w: &Word) -> Option<String> {
    let mut s = String::new();
    for p in w {
        match p {
            Part::Text(t) => s.push_str(t),
            Part::Var(_) => return None,
        }
    }
    Some(s)
}

/// An assignment word: `NAME=` followed by the value.
fn assignment(w: &Word) -> Option<(String, Word)> {
    let Some(Part::Text(first)) = w.first() else { return None };
    let (name, rest) = first.split_once('=')?;
    if !is_name(name) {
        return None;
    }
    let mut value = Vec::new();
    if !rest.is_empty() {
        value.push(Part::Text(rest.to_string()));
    }
    value.extend(w[1..].iter().cloned());
    Some((name.to_string(), value))
}

const SHELL_KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "function",
    "{", "}", "[", "[[", "test",
];

/// Where the command word is: after a leading `export` and the `NAME=value` assignments.
fn command_start(words: &[Word]) -> usize {
    let first = usize::from(words.first().and_then(literal).as_deref() == Some("export"));
    first + words[first..].iter().take_while(|w| assignment(w).is_some()).count()
}

/// Checks that a command is one this interpreter carries out (the command word and, for esxcli and
/// vim-cmd, the namespace and options must be literal text).
fn check_command(c: &Command) -> Result<(), String> {
    let words: Vec<Option<String>> = c.words.iter().map(literal).collect();
    let start = command_start(&c.words);
    if start == c.words.len() {
        return Ok(());
    }
    let Some(name) = words[start].clone() else {
        return Err(String::from("the command name must be written out, not taken from a variable"));
    };
    if SHELL_KEYWORDS.contains(&name.as_str()) {
        return Err(format!(
            "`{name}`: conditionals, loops and tests are not supported by Ember's script interpreter"
        ));
    }
    match name.as_str() {
        ":" | "true" | "false" | "echo" | "exit" | "set" | "sleep" => Ok(()),
        "esxcli" | "localcli" | "vim-cmd" => {
            // The namespace path and option names decide what runs: they must be literal.
            let args = &words[start + 1..];
            let mut literal_args = Vec::new();
            for (i, a) in args.iter().enumerate() {
                match a {
                    Some(a) => literal_args.push(a.clone()),
                    // A value after an option name may come from a variable.
                    None if i > 0 && args[i - 1].as_deref().is_some_and(|p| p.starts_with('-') && !p.contains('=')) => {
                        literal_args.push(String::from("$value"))
                    }
                    None => {
                        return Err(format!(
                            "{name}: the namespace and option names must be written out; only option values may use variables"
                        ))
                    }
                }
            }
            let refs: Vec<&str> = literal_args.iter().map(String::as_str).collect();
            if name == "vim-cmd" {
                vim_cmd_action(&refs).map(|_| ())
            } else {
                esxcli_command(&refs).map(|_| ())
            }
        }
        other => Err(format!(
            "`{other}`: not a command Ember's script interpreter knows (it runs esxcli and vim-cmd configuration commands, echo, exit, set -e, sleep)"
        )),
    }
}

// ---- esxcli ----

/// An option of an esxcli command: long name, short letter, whether it takes a value.
struct Opt {
    long: &'static str,
    short: char,
    value: bool,
}

const fn opt(long: &'static str, short: char) -> Opt {
    Opt { long, short, value: true }
}

const fn flag(long: &'static str, short: char) -> Opt {
    Opt { long, short, value: false }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esxcli {
    HostnameSet,
    HostnameGet,
    DnsServerAdd,
    DnsServerRemove,
    DnsServerList,
    DnsSearchAdd,
    DnsSearchRemove,
    DnsSearchList,
    Ipv4Set,
    RouteAdd,
    PortgroupSet,
    KeyboardSet,
    AdvancedSet,
}

const ESXCLI: &[(&str, Esxcli, &[Opt])] = &[
    ("system hostname set", Esxcli::HostnameSet, &[opt("host", 'H'), opt("domain", 'd'), opt("fqdn", 'f')]),
    ("system hostname get", Esxcli::HostnameGet, &[]),
    ("network ip dns server add", Esxcli::DnsServerAdd, &[opt("server", 's')]),
    ("network ip dns server remove", Esxcli::DnsServerRemove, &[opt("server", 's'), flag("all", 'a')]),
    ("network ip dns server list", Esxcli::DnsServerList, &[]),
    ("network ip dns search add", Esxcli::DnsSearchAdd, &[opt("domain", 'd')]),
    ("network ip dns search remove", Esxcli::DnsSearchRemove, &[opt("domain", 'd')]),
    ("network ip dns search list", Esxcli::DnsSearchList, &[]),
    (
        "network ip interface ipv4 set",
        Esxcli::Ipv4Set,
        &[
            opt("interface-name", 'i'),
            opt("type", 't'),
            opt("ipv4", 'I'),
            opt("netmask", 'N'),
            opt("gateway", 'g'),
        ],
    ),
    ("network ip route ipv4 add", Esxcli::RouteAdd, &[opt("gateway", 'g'), opt("network", 'n')]),
    (
        "network vswitch standard portgroup set",
        Esxcli::PortgroupSet,
        &[opt("portgroup-name", 'p'), opt("vlan-id", 'v')],
    ),
    ("system settings keyboard layout set", Esxcli::KeyboardSet, &[opt("layout", 'l')]),
    ("system settings advanced set", Esxcli::AdvancedSet, &[opt("option", 'o'), opt("int-value", 'i')]),
];

/// Options given to a command: long name and value (`"true"` for flags).
type Given = Vec<(&'static str, String)>;

/// Finds the esxcli command in `args` and its options (`--long=v`, `--long v`, `-s v`).
fn esxcli_command(args: &[&str]) -> Result<(Esxcli, Given), String> {
    let path_len = args.iter().take_while(|a| !a.starts_with('-')).count();
    let path = args[..path_len].join(" ");
    let Some((_, cmd, opts)) = ESXCLI.iter().find(|(p, _, _)| *p == path) else {
        return Err(if path.is_empty() {
            String::from("esxcli: no command given")
        } else {
            format!("esxcli {path}: not a command Ember carries out")
        });
    };
    let mut given: Given = Vec::new();
    let mut rest = args[path_len..].iter();
    while let Some(a) = rest.next() {
        let (o, inline) = if let Some(long) = a.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let o = opts
                .iter()
                .find(|o| o.long == name)
                .ok_or_else(|| format!("esxcli {path}: unknown option --{name}"))?;
            (o, value)
        } else if let Some(short) = a.strip_prefix('-').filter(|s| s.chars().count() == 1) {
            let o = opts
                .iter()
                .find(|o| short.starts_with(o.short))
                .ok_or_else(|| format!("esxcli {path}: unknown option -{short}"))?;
            (o, None)
        } else {
            return Err(format!("esxcli {path}: unexpected argument `{a}`"));
        };
        let value = match (o.value, inline) {
            (true, Some(v)) => v,
            (true, None) => {
                rest.next().ok_or_else(|| format!("esxcli {path}: --{} needs a value", o.long))?.to_string()
            }
            (false, None) => String::from("true"),
            (false, Some(_)) => return Err(format!("esxcli {path}: --{} takes no value", o.long)),
        };
        if given.iter().any(|(n, _)| *n == o.long) {
            return Err(format!("esxcli {path}: --{} given twice", o.long));
        }
        given.push((o.long, value));
    }
    Ok((*cmd, given))
}

fn get<'a>(opts: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    opts.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

fn need<'a>(opts: &'a [(&'static str, String)], name: &str) -> Result<&'a str, String> {
    get(opts, name).ok_or_else(|| format!("--{name} is required"))
}

fn ipv4(option: &str, v: &str) -> Result<Ipv4Addr, String> {
    v.parse().map_err(|_| format!("--{option}={v}: not an IPv4 address"))
}

/// Applies an esxcli command to `cfg`; returns what it prints.
fn esxcli(args: &[&str], cfg: &mut HostConfig) -> Result<Vec<String>, String> {
    let (cmd, o) = esxcli_command(args)?;
    let path = args.iter().take_while(|a| !a.starts_with('-')).copied().collect::<Vec<_>>().join(" ");
    esxcli_apply(cmd, &o, cfg).map_err(|e| format!("esxcli {path}: {e}"))
}

fn esxcli_apply(
    cmd: Esxcli,
    o: &[(&'static str, String)],
    cfg: &mut HostConfig,
) -> Result<Vec<String>, String> {
    let mut c = cfg.clone();
    let mut printed = Vec::new();
    let net = &mut c.network;
    match cmd {
        Esxcli::HostnameSet => {
            let (label, domain) = match net.hostname.split_once('.') {
                Some((h, d)) => (String::from(h), Some(String::from(d))),
                None => (net.hostname.clone(), None),
            };
            let name = match (get(o, "fqdn"), get(o, "host"), get(o, "domain")) {
                (Some(f), None, None) => String::from(f),
                (None, None, None) => return Err(String::from("give --host, --domain or --fqdn")),
                (None, h, d) => {
                    let h = h.map(String::from).unwrap_or(label);
                    match d.map(String::from).or(domain) {
                        Some(d) if !d.is_empty() => format!("{h}.{d}"),
                        _ => h,
                    }
                }
                (Some(_), _, _) => {
                    return Err(String::from("--fqdn cannot be combined with --host or --domain"))
                }
            };
            if let Some(h) = get(o, "host").filter(|h| h.contains('.')) {
                return Err(format!("--host={h}: a host name without its domain (use --fqdn for both)"));
            }
            validate_hostname("hostname", &name).map_err(|e| e.problem)?;
            net.hostname = name;
        }
        Esxcli::HostnameGet => printed.push(format!("Host Name: {}", net.hostname)),
        Esxcli::DnsServerAdd => {
            let ip = ipv4("server", need(o, "server")?)?;
            if !net.dns.contains(&ip) {
                if net.dns.len() >= MAX_DNS_SERVERS {
                    return Err(format!("at most {MAX_DNS_SERVERS} DNS servers"));
                }
                net.dns.push(ip);
            }
        }
        Esxcli::DnsServerRemove => match (get(o, "server"), get(o, "all")) {
            (None, Some(_)) => net.dns.clear(),
            (Some(s), None) => {
                let ip = ipv4("server", s)?;
                let before = net.dns.len();
                net.dns.retain(|d| *d != ip);
                if net.dns.len() == before {
                    return Err(format!("{ip} is not a configured DNS server"));
                }
            }
            _ => return Err(String::from("give either --server or --all")),
        },
        Esxcli::DnsServerList => {
            let list: Vec<String> = net.dns.iter().map(Ipv4Addr::to_string).collect();
            printed.push(format!("DNSServers: {}", list.join(", ")));
        }
        Esxcli::DnsSearchAdd => {
            let d = need(o, "domain")?;
            validate_hostname("domain", d).map_err(|e| format!("--domain={d}: {}", e.problem))?;
            if !c.dns_search.iter().any(|s| s == d) {
                if c.dns_search.len() >= MAX_SEARCH_SUFFIXES {
                    return Err(format!("at most {MAX_SEARCH_SUFFIXES} search domains"));
                }
                c.dns_search.push(String::from(d));
            }
        }
        Esxcli::DnsSearchRemove => {
            let d = need(o, "domain")?;
            let before = c.dns_search.len();
            c.dns_search.retain(|s| s != d);
            if c.dns_search.len() == before {
                return Err(format!("{d} is not a configured search domain"));
            }
        }
        Esxcli::DnsSearchList => printed.push(format!("DNSSearch Domains: {}", c.dns_search.join(", "))),
        Esxcli::Ipv4Set => {
            let i = need(o, "interface-name")?;
            if i != "vmk0" {
                return Err(format!("--interface-name={i}: Ember's management interface is vmk0"));
            }
            match need(o, "type")? {
                "dhcp" => {
                    if ["ipv4", "netmask", "gateway"].iter().any(|n| get(o, n).is_some()) {
                        return Err(String::from("--type=dhcp takes no --ipv4, --netmask or --gateway"));
                    }
                    net.ipv4 = Ipv4Mode::Dhcp;
                }
                "static" => {
                    let address = ipv4("ipv4", need(o, "ipv4")?)?;
                    let mask = ipv4("netmask", need(o, "netmask")?)?;
                    let bits = u32::from(mask);
                    if bits.leading_ones() + bits.trailing_zeros() != 32 || bits == 0 {
                        return Err(format!("--netmask={mask}: not a network mask"));
                    }
                    let gateway = get(o, "gateway").map(|g| ipv4("gateway", g)).transpose()?;
                    net.ipv4 = Ipv4Mode::Static { address, prefix: bits.leading_ones() as u8, gateway };
                }
                t => return Err(format!("--type={t}: expected dhcp or static")),
            }
        }
        Esxcli::RouteAdd => {
            let n = need(o, "network")?;
            if n != "default" && n != "0.0.0.0/0" {
                return Err(format!("--network={n}: Ember's management network has only a default route"));
            }
            let gw = ipv4("gateway", need(o, "gateway")?)?;
            match &mut net.ipv4 {
                Ipv4Mode::Static { gateway, .. } => *gateway = Some(gw),
                Ipv4Mode::Dhcp => return Err(String::from(
                    "the management network uses DHCP, which gives the gateway; set a static address first",
                )),
            }
        }
        Esxcli::PortgroupSet => {
            let p = need(o, "portgroup-name")?;
            if p != "Management Network" {
                return Err(format!(
                    "--portgroup-name={p}: Ember has only the \"Management Network\" port group"
                ));
            }
            let v = need(o, "vlan-id")?;
            net.vlan = match v.parse::<u16>() {
                Ok(0) => None,
                Ok(id @ 1..=4094) => Some(id),
                _ => return Err(format!("--vlan-id={v}: expected 0 (none) or 1-4094")),
            };
        }
        Esxcli::KeyboardSet => {
            let l = need(o, "layout")?;
            if !KEYBOARD_LAYOUTS.contains(&l) {
                return Err(format!("--layout={l}: unknown layout (for example \"US Default\", \"German\")"));
            }
            c.keyboard = String::from(l);
        }
        Esxcli::AdvancedSet => {
            let option = need(o, "option")?;
            let v = need(o, "int-value")?;
            let secs = v.parse::<u32>().map_err(|_| format!("--int-value={v}: expected seconds"))?;
            if secs % 60 != 0 || secs / 60 > MAX_TIMEOUT_MINUTES {
                return Err(format!(
                    "--int-value={v}: Ember keeps this time-out in whole minutes: a multiple of 60 up to {}",
                    MAX_TIMEOUT_MINUTES * 60
                ));
            }
            let field = match option {
                "/UserVars/ESXiShellTimeOut" => &mut c.shell_timeout_minutes,
                "/UserVars/ESXiShellInteractiveTimeOut" => &mut c.shell_idle_timeout_minutes,
                "/UserVars/DcuiTimeOut" => &mut c.dcui_timeout_minutes,
                other => return Err(format!("--option={other}: not a setting Ember has (ESXiShellTimeOut, ESXiShellInteractiveTimeOut, DcuiTimeOut under /UserVars)")),
            };
            *field = secs / 60;
        }
    }
    // Everything is checked again as a whole, as a stored configuration is.
    HostConfig::decode(&c.encode()).map_err(|e| e.to_string())?;
    *cfg = c;
    Ok(printed)
}

// ---- vim-cmd ----

/// `(ssh, enable)` for a vim-cmd service action.
fn vim_cmd_action(args: &[&str]) -> Result<(bool, bool), String> {
    let [action] = args else {
        return Err(String::from("vim-cmd: expected one action, e.g. hostsvc/enable_ssh"));
    };
    Ok(match *action {
        "hostsvc/enable_ssh" | "hostsvc/start_ssh" => (true, true),
        "hostsvc/disable_ssh" | "hostsvc/stop_ssh" => (true, false),
        "hostsvc/enable_esx_shell" | "hostsvc/start_esx_shell" => (false, true),
        "hostsvc/disable_esx_shell" | "hostsvc/stop_esx_shell" => (false, false),
        other => return Err(format!("vim-cmd {other}: not an action Ember carries out (hostsvc/enable_ssh, disable_ssh, enable_esx_shell, disable_esx_shell, and start_/stop_ forms)")),
    })
}

// ---- running ----

struct Shell<'a> {
    vars: Vec<(String, String)>,
    status: i32,
    errexit: bool,
    cfg: &'a mut HostConfig,
    output: Vec<String>,
}

enum Flow {
    Next,
    Exit(i32),
}

impl Shell<'_> {
    /// The word with its variables expanded; `budget` is what the command's words may still
    /// take ([`MAX_EXPANDED_BYTES`] in all).
    fn expand(&self, w: &Word, budget: &mut usize) -> Result<String, String> {
        let mut s = String::new();
        for p in w {
            let piece = match p {
                Part::Text(t) => t.as_str(),
                Part::Var(v) if v == "?" => {
                    s.push_str(&self.status.to_string());
                    continue;
                }
                Part::Var(v) => {
                    self.vars.iter().find(|(n, _)| n == v).map_or("", |(_, value)| value.as_str())
                }
            };
            if piece.len() > *budget {
                return Err(format!("the command expands to more than {MAX_EXPANDED_BYTES} bytes"));
            }
            *budget -= piece.len();
            s.push_str(piece);
        }
        Ok(s)
    }

    /// Adds a line to the script's output, as long as it keeps fewer than [`MAX_OUTPUT_LINES`].
    fn say(&mut self, line: String) {
        match self.output.len() {
            n if n < MAX_OUTPUT_LINES => self.output.push(line),
            n if n == MAX_OUTPUT_LINES => {
                self.output.push(format!("(more output dropped: at most {MAX_OUTPUT_LINES} lines are kept)"))
            }
            _ => {}
        }
    }

    fn set(&mut self, name: String, value: String) -> Result<(), String> {
        if let Some(slot) = self.vars.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
            return Ok(());
        }
        if self.vars.len() >= MAX_VARIABLES {
            return Err(format!("more than {MAX_VARIABLES} variables"));
        }
        self.vars.push((name, value));
        Ok(())
    }

    /// Runs one command; its exit status goes to `self.status`.
    fn command(&mut self, c: &Command) -> Flow {
        let start = command_start(&c.words);
        let mut budget = MAX_EXPANDED_BYTES;
        for (name, value) in c.words[..start].iter().filter_map(assignment) {
            if let Err(e) = self.expand(&value, &mut budget).and_then(|value| self.set(name, value)) {
                self.say(format!("line {}: {e}", c.line));
                self.status = 1;
                return Flow::Next;
            }
        }
        let words = &c.words[start..];
        if words.is_empty() {
            self.status = 0;
            return Flow::Next;
        }
        let args = match words.iter().map(|w| self.expand(w, &mut budget)).collect::<Result<Vec<_>, _>>() {
            Ok(args) => args,
            Err(e) => {
                self.say(format!("line {}: {e}", c.line));
                self.status = 1;
                return Flow::Next;
            }
        };
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let result: Result<Vec<String>, String> = match refs[0] {
            ":" | "true" | "sleep" => Ok(Vec::new()),
            "false" => Err(String::new()),
            "echo" => {
                let text = match refs.get(1) {
                    Some(&"-n") => refs[2..].join(" "),
                    _ => refs[1..].join(" "),
                };
                Ok(alloc::vec![text])
            }
            "exit" => {
                let status = match refs.get(1) {
                    None => self.status,
                    Some(n) => n.parse::<i32>().map(|n| n & 0xff).unwrap_or(2),
                };
                return Flow::Exit(status);
            }
            "set" => match refs.get(1..) {
                Some(["-e"]) => {
                    self.errexit = true;
                    Ok(Vec::new())
                }
                Some(["+e"]) => {
                    self.errexit = false;
                    Ok(Vec::new())
                }
                _ => Err(String::from("set: only -e and +e are supported")),
            },
            "vim-cmd" => vim_cmd_action(&refs[1..]).map(|(ssh, on)| {
                if ssh {
                    self.cfg.ssh_enabled = on;
                } else {
                    self.cfg.shell_enabled = on;
                }
                Vec::new()
            }),
            "esxcli" | "localcli" => esxcli(&refs[1..], self.cfg),
            other => Err(format!("`{other}`: unknown command")),
        };
        match result {
            Ok(printed) => {
                for p in printed {
                    self.say(format!("line {}: {p}", c.line));
                }
                self.status = 0;
            }
            Err(why) => {
                if !why.is_empty() {
                    self.say(format!("line {}: {why}", c.line));
                }
                self.status = 1;
            }
        }
        Flow::Next
    }
}

/// Runs the configuration's pending `%firstboot` scripts on it, in order, and removes them.
/// Returns the log: what each printed and its exit status.
pub fn run_firstboot(cfg: &mut HostConfig) -> Vec<String> {
    let pending = core::mem::take(&mut cfg.firstboot);
    let mut log = Vec::new();
    for p in pending {
        match parse(&p.body, p.first_line) {
            Ok(script) => {
                let o = script.run(cfg);
                log.extend(o.output.iter().map(|line| format!("%firstboot {}: {line}", p.source)));
                let plural = if o.commands == 1 { "" } else { "s" };
                log.push(format!(
                    "%firstboot {}: exit status {} ({} command{plural} run)",
                    p.source, o.status, o.commands
                ));
            }
            // Stored scripts were checked when stored; a newer format is refused, not guessed at.
            Err(e) => log.push(format!("%firstboot {}: not run: line {}: {}", p.source, e.line, e.message)),
        }
    }
    log
}

impl Script {
    /// Runs the script on `cfg`. Each command that succeeds has changed `cfg`; one that fails has
    /// not.
    pub fn run(&self, cfg: &mut HostConfig) -> Outcome {
        let mut sh = Shell { vars: Vec::new(), status: 0, errexit: false, cfg, output: Vec::new() };
        let mut commands = 0;
        // Whether the next command runs, after `&&`/`||`.
        let mut skip = false;
        for c in &self.commands {
            let ran = !skip;
            if ran {
                commands += 1;
                if let Flow::Exit(status) = sh.command(c) {
                    return Outcome { status, output: sh.output, commands };
                }
            }
            skip = match c.join {
                Join::Then => false,
                Join::And => sh.status != 0,
                Join::Or => sh.status == 0,
            };
            // `set -e`: a failing command ends the script, unless it is followed by `&&`/`||`.
            if sh.errexit && ran && sh.status != 0 && c.join == Join::Then {
                sh.say(format!("line {}: set -e: the script stops here (exit status {})", c.line, sh.status));
                return Outcome { status: sh.status, output: sh.output, commands };
            }
        }
        Outcome { status: sh.status, output: sh.output, commands }
    }

    /// Whether the script has no commands.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

#[cfg(test)]
mod tests;
