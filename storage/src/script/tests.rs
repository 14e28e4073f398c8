use super::*;
use crate::netconfig::Ipv4Mode;

const HASH: &str =
    "$pbkdf2-sha256$100000$AAECAwQFBgcICQoLDA0ODw==$3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=";

fn base() -> HostConfig {
    HostConfig::defaults(HASH.into())
}

fn run(text: &str) -> (HostConfig, Outcome) {
    let script = parse(text, 10).unwrap_or_else(|e| panic!("{text}: line {}: {}", e.line, e.message));
    let mut cfg = base();
    let outcome = script.run(&mut cfg);
    (cfg, outcome)
}

fn refused(text: &str) -> (usize, String) {
    let e = parse(text, 10).unwrap_err();
    (e.line, e.message)
}

#[test]
fn a_typical_firstboot_script_configures_the_host() {
    let (c, o) = run(r#"
# Lab defaults
esxcli system hostname set --fqdn=esx01.lab.example
esxcli network ip dns server add --server=10.0.0.53
esxcli network ip dns server add -s 10.0.0.54
esxcli network ip dns search add --domain lab.example
esxcli network ip interface ipv4 set -i vmk0 -t static -I 10.0.0.21 -N 255.255.255.0
esxcli network ip route ipv4 add --gateway 10.0.0.1 --network default
esxcli network vswitch standard portgroup set -p "Management Network" -v 20
esxcli system settings keyboard layout set -l 'German'
esxcli system settings advanced set -o /UserVars/ESXiShellTimeOut -i 3600
esxcli system settings advanced set --option=/UserVars/DcuiTimeOut --int-value=0
vim-cmd hostsvc/enable_ssh
vim-cmd hostsvc/start_esx_shell
echo "done on $HOSTNAME"
"#);
    assert_eq!(o.status, 0, "{:?}", o.output);
    assert_eq!(o.commands, 13);
    assert_eq!(c.network.hostname, "esx01.lab.example");
    assert_eq!(c.network.dns, [Ipv4Addr::new(10, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 54)]);
    assert_eq!(c.dns_search, ["lab.example"]);
    assert_eq!(
        c.network.ipv4,
        Ipv4Mode::Static {
            address: Ipv4Addr::new(10, 0, 0, 21),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1))
        }
    );
    assert_eq!(c.network.vlan, Some(20));
    assert_eq!(c.keyboard, "German");
    assert_eq!((c.shell_timeout_minutes, c.dcui_timeout_minutes), (60, 0));
    assert!(c.ssh_enabled && c.shell_enabled);
    assert_eq!(o.output, ["line 24: done on "]);
}

#[test]
fn variables_quotes_lists_and_exit_status() {
    let (c, o) = run("SUFFIX=lab.example; export DNS1=10.0.0.53\n\
         esxcli system hostname set --host 'esx 2' || echo \"bad name, status $?\"\n\
         esxcli system hostname set --host esx2 --domain \"$SUFFIX\" && echo named\n\
         esxcli network ip dns server add --server \"${DNS1}\" \\\n  && echo 'dns $DNS1' # a comment\n\
         false && echo never\n\
         false || echo \"recovered\"\n\
         echo -n a\\ b \"c  d\" $UNSET end\n");
    assert_eq!(o.status, 0, "{:?}", o.output);
    assert_eq!(c.network.hostname, "esx2.lab.example");
    assert_eq!(c.network.dns, [Ipv4Addr::new(10, 0, 0, 53)]);
    assert_eq!(
        o.output,
        [
            "line 11: esxcli system hostname set: `esx 2` is not a valid host name (labels of letters, digits and inner hyphens, 1-63 each)",
            "line 11: bad name, status 1",
            "line 12: named",
            "line 13: dns $DNS1",
            "line 16: recovered",
            "line 17: a b c  d  end",
        ]
    );
}

#[test]
fn a_failing_command_changes_nothing_and_the_script_goes_on_unless_set_e() {
    let (c, o) = run("esxcli network ip dns server add --server 10.0.0.300\nvim-cmd hostsvc/enable_ssh\n");
    assert_eq!(o.status, 0);
    assert!(c.ssh_enabled && c.network.dns.is_empty());
    assert_eq!(
        o.output,
        ["line 10: esxcli network ip dns server add: --server=10.0.0.300: not an IPv4 address"]
    );

    let (c, o) =
        run("set -e\nesxcli network ip route ipv4 add -g 10.0.0.1 -n default\nvim-cmd hostsvc/enable_ssh\n");
    assert_eq!(o.status, 1);
    assert!(!c.ssh_enabled, "set -e stopped the script");
    assert_eq!(o.commands, 2);
    assert!(o.output[1].ends_with("set -e: the script stops here (exit status 1)"), "{:?}", o.output);
    // A failure followed by `||` does not stop a `set -e` script.
    let (c, o) = run("set -e\nfalse || true\nvim-cmd hostsvc/enable_ssh\n");
    assert!(c.ssh_enabled && o.status == 0);

    let (c, o) = run("vim-cmd hostsvc/enable_ssh\nexit 3\nvim-cmd hostsvc/enable_esx_shell\n");
    assert_eq!((o.status, c.ssh_enabled, c.shell_enabled), (3, true, false));
    let (_, o) = run("false\n");
    assert_eq!(o.status, 1);
    let (_, o) = run("false\nexit\n");
    assert_eq!(o.status, 1);
}

#[test]
fn every_command_checks_its_values() {
    let fails = |text: &str| {
        let (c, o) = run(text);
        assert_eq!(o.status, 1, "{text}: {:?}", o.output);
        assert_eq!(c, base(), "{text} changed the configuration");
        o.output.join("\n")
    };
    assert!(fails("esxcli system hostname set").contains("give --host, --domain or --fqdn"));
    assert!(fails("esxcli system hostname set --fqdn a.b --host c").contains("cannot be combined"));
    assert!(fails("esxcli system hostname set --host a.b").contains("without its domain"));
    assert!(fails("esxcli network ip dns server remove --server 10.1.1.1")
        .contains("not a configured DNS server"));
    assert!(fails("esxcli network ip dns server remove").contains("either --server or --all"));
    assert!(fails("esxcli network ip dns search add -d bad_domain").contains("--domain=bad_domain"));
    assert!(
        fails("esxcli network ip dns search remove -d x.example").contains("not a configured search domain")
    );
    assert!(fails("esxcli network ip interface ipv4 set -i vmk1 -t dhcp").contains("vmk0"));
    assert!(fails("esxcli network ip interface ipv4 set -i vmk0 -t static -I 10.0.0.2 -N 255.0.255.0")
        .contains("not a network mask"));
    assert!(fails("esxcli network ip interface ipv4 set -i vmk0 -t static -I 10.0.0.2")
        .contains("--netmask is required"));
    assert!(fails("esxcli network ip interface ipv4 set -i vmk0 -t dhcp -I 10.0.0.2").contains("takes no"));
    assert!(fails("esxcli network ip interface ipv4 set -i vmk0 -t none").contains("expected dhcp or static"));
    assert!(
        fails("esxcli network ip route ipv4 add -g 10.0.0.1 -n 10.0.0.0/8").contains("only a default route")
    );
    assert!(fails("esxcli network ip route ipv4 add -g 10.0.0.1 -n default").contains("uses DHCP"));
    assert!(fails("esxcli network vswitch standard portgroup set -p VM -v 3").contains("Management Network"));
    assert!(fails("esxcli network vswitch standard portgroup set -p 'Management Network' -v 4095")
        .contains("1-4094"));
    assert!(fails("esxcli system settings keyboard layout set -l Klingon").contains("unknown layout"));
    assert!(fails("esxcli system settings advanced set -o /UserVars/ESXiShellTimeOut -i 90")
        .contains("whole minutes"));
    assert!(fails("esxcli system settings advanced set -o /UserVars/ESXiShellTimeOut -i 86460")
        .contains("whole minutes"));
    assert!(
        fails("esxcli system settings advanced set -o /Net/Foo -i 60").contains("not a setting Ember has")
    );
    assert!(fails("X=--fqdn\nesxcli system hostname set --host $X.y").contains("without its domain"));
    // Four DNS servers are one too many.
    let (c, o) = run("for_ip=1\nesxcli network ip dns server add -s 10.0.0.1\nesxcli network ip dns server add -s 10.0.0.2\nesxcli network ip dns server add -s 10.0.0.3\nesxcli network ip dns server add -s 10.0.0.4\n");
    assert_eq!((c.network.dns.len(), o.status), (3, 1));
    let (c, _) = run("esxcli network ip dns server add -s 10.0.0.1\nesxcli network ip dns server remove --all\nesxcli system hostname get\n");
    assert!(c.network.dns.is_empty());
}

#[test]
fn hostname_parts() {
    let set = |script: &str| run(script).0.network.hostname;
    assert_eq!(set("esxcli system hostname set --host esx9"), "esx9");
    assert_eq!(
        set("esxcli system hostname set -f esx9.a.example\nesxcli system hostname set -H esx10"),
        "esx10.a.example"
    );
    assert_eq!(
        set("esxcli system hostname set -f esx9.a.example\nesxcli system hostname set -d b.example"),
        "esx9.b.example"
    );
    assert_eq!(set("esxcli system hostname set --domain=c.example"), "ember.c.example");
    let (_, o) = run("esxcli system hostname set -H h1\nesxcli system hostname get\n");
    assert_eq!(o.output, ["line 11: Host Name: h1"]);
}

#[test]
fn what_the_interpreter_does_not_take_is_refused_with_its_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("echo a | grep a\n", 10, "pipes (`|`) are not supported"),
        ("true\necho hi > /tmp/x\n", 11, "redirections are not supported"),
        ("H=$(hostname)\n", 10, "command substitutions are not supported"),
        ("H=`hostname`\n", 10, "command substitutions are not supported"),
        ("sleep 5 &\n", 10, "background jobs"),
        ("if true; then echo; fi\n", 10, "`if`: conditionals, loops and tests are not supported"),
        ("for i in 1 2; do echo $i; done\n", 10, "`for`: conditionals"),
        ("f() { true; }\n", 10, "subshells and functions"),
        ("\n\nreboot\n", 12, "`reboot`: not a command Ember's script interpreter knows"),
        (
            "esxcli software vib install -d x\n",
            10,
            "esxcli software vib install: not a command Ember carries out",
        ),
        ("esxcli network ip dns server add --srv 1.2.3.4\n", 10, "unknown option --srv"),
        ("esxcli network ip dns server add -x 1.2.3.4\n", 10, "unknown option -x"),
        ("esxcli network ip dns server add --server\n", 10, "--server needs a value"),
        ("esxcli network ip dns server remove --all=yes\n", 10, "--all takes no value"),
        ("esxcli network ip dns server add -s 1.1.1.1 -s 2.2.2.2\n", 10, "--server given twice"),
        (
            "esxcli network ip dns server add stray\n",
            10,
            "esxcli network ip dns server add stray: not a command",
        ),
        ("esxcli\n", 10, "esxcli: no command given"),
        ("C=esxcli\n$C system hostname get\n", 11, "the command name must be written out"),
        ("P=system\nesxcli $P hostname get\n", 11, "only option values may use variables"),
        ("vim-cmd hostsvc/maintenance_mode_enter\n", 10, "not an action Ember carries out"),
        ("vim-cmd\n", 10, "expected one action"),
        ("echo 'open\n", 10, "unterminated single quote"),
        ("echo \"open\n", 10, "unterminated double quote"),
        ("echo ${a-b}\n", 10, "only plain variable names"),
        ("true &&\n", 10, "needs a command after it"),
        ("&& true\n", 10, "without a command before it"),
        ("echo a;; echo b\n", 10, "`case` statements"),
    ];
    for (text, line, message) in cases {
        let (l, m) = refused(text);
        assert_eq!(l, *line, "{text}: {m}");
        assert!(m.contains(message), "{text}: {m}");
    }
    let long = "true\n".repeat(MAX_SCRIPT_BYTES / 5 + 1);
    assert!(refused(&long).1.contains("longer than"));
}

#[test]
fn continuation_lines_count_from_the_first() {
    let (c, o) = run(
        "esxcli system hostname set \\\n  --fqdn=a.example\nbad_command_here_is_fine_at_runtime=1\necho $?\n",
    );
    assert_eq!(c.network.hostname, "a.example");
    assert_eq!(o.output, ["line 13: 0"]);
}

/// A script that doubles a variable on every line, or prints without end, is stopped by the
/// bounds: memory stays bounded and the script ends.
#[test]
fn variables_are_bounded_in_number() {
    // 300 different variables: the 257th and every later one is refused, with its line (the
    // script starts at line 10 here); the script goes on.
    let mut text = String::new();
    for i in 0..300 {
        text.push_str(&format!("V{i}=x\n"));
    }
    text.push_str("echo done\n");
    let (_, o) = run(&text);
    let refused: Vec<&String> = o.output.iter().filter(|l| l.contains("variables")).collect();
    assert_eq!(refused.len(), 300 - MAX_VARIABLES, "{:?}", o.output);
    assert_eq!(refused[0], &format!("line {}: more than {MAX_VARIABLES} variables", 10 + MAX_VARIABLES));
    assert_eq!(o.output.last().map(String::as_str), Some("line 310: done"));
    // Setting an existing variable again is not a new one.
    let mut text = String::new();
    for _ in 0..1000 {
        text.push_str("A=x\n");
    }
    assert!(run(&text).1.output.is_empty());
}

#[test]
fn expansion_and_output_are_bounded() {
    let mut text = String::from("A=xxxxxxxxxxxxxxxx\n");
    for _ in 0..3000 {
        text.push_str("A=$A$A\n");
    }
    text.push_str("echo ${A}\n");
    let (_, o) = run(&text);
    assert_eq!(o.commands, 3002);
    assert!(o.output.len() <= MAX_OUTPUT_LINES + 1);
    assert!(o.output.iter().all(|l| l.len() < MAX_EXPANDED_BYTES + 100));
    assert!(o.output[0].ends_with(&format!("the command expands to more than {MAX_EXPANDED_BYTES} bytes")));
    assert_eq!(
        o.output.last().unwrap(),
        &format!("(more output dropped: at most {MAX_OUTPUT_LINES} lines are kept)")
    );
    // One command with many references to a large value fails as a whole.
    let (_, o) = run(&format!("B={}\necho {}\n", "y".repeat(4000), "$B ".repeat(5)));
    assert_eq!(o.status, 1);
    assert_eq!(o.output, [format!("line 11: the command expands to more than {MAX_EXPANDED_BYTES} bytes")]);
}
