use std::path::Path;

use tokio_postgres::config::Host;

use super::*;
use crate::config::syntax::redact_unparsed;

const PW: &str = "S3cr3t-p@ss:w/rd";
const PW_ENC: &str = "S3cr3t-p%40ss%3Aw%2Frd";

fn parse(s: &str) -> DbTarget {
    DbTarget::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn url_form_with_percent_encoded_password() {
    let t = parse(&format!("postgres://app:{PW_ENC}@db.example:6432/orders"));
    assert_eq!(t.user(), Some("app"));
    assert_eq!(t.password().map(Secret::expose), Some(PW));
    assert_eq!(t.dbname(), Some("orders"));
    assert_eq!(t.hosts(), ["db.example"]);
    assert_eq!(t.ports(), [6432]);
    let pg = t.pg_config();
    assert_eq!(pg.get_password(), Some(PW.as_bytes()));
    assert_eq!(pg.get_user(), Some("app"));
    assert_eq!(pg.get_dbname(), Some("orders"));
    assert_eq!(pg.get_ports(), [6432]);
    assert_eq!(pg.get_hosts(), [Host::Tcp("db.example".into())]);
    assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    assert_eq!(t.ssl_mode(), SslMode::Prefer);
}

#[test]
fn postgresql_scheme_and_unencoded_at_in_password() {
    let t = parse("postgresql://app:p@ss@localhost/app");
    assert_eq!(t.password().unwrap().expose(), "p@ss");
    assert_eq!(t.hosts(), ["localhost"]);
    assert_eq!(t.ports(), [5432]);
}

#[test]
fn multi_host_url_and_ipv6() {
    let t = parse("postgres://u@a:5432,b:5433,[::1]:5434/db");
    assert_eq!(t.hosts(), ["a", "b", "::1"]);
    assert_eq!(t.ports(), [5432, 5433, 5434]);
    assert_eq!(t.pg_config().get_hosts().len(), 3);
    assert_eq!(t.pg_config().get_ports(), [5432, 5433, 5434]);
    assert!(t
        .redacted()
        .starts_with("postgres://u@a:5432,b:5433,[::1]:5434/db?"));
}

#[test]
fn key_value_form_multi_host_and_quoting() {
    let t = parse("host=a,b port=5432,5433 user=app password=x dbname=x");
    assert_eq!(t.hosts(), ["a", "b"]);
    assert_eq!(t.ports(), [5432, 5433]);
    let t = parse("host = a  user=app password='a b\\'c' dbname=x sslmode=require");
    assert_eq!(t.password().unwrap().expose(), "a b'c");
    assert_eq!(t.ssl_mode(), SslMode::Require);
    assert_eq!(t.pg_config().get_password(), Some("a b'c".as_bytes()));
}

#[test]
fn unix_socket_hosts() {
    let t = parse("host=/tmp/dir port=5433 user=postgres");
    assert_eq!(t.pg_config().get_hosts(), [Host::Unix("/tmp/dir".into())]);
    let t = parse("postgres://postgres@%2Ftmp%2Fdir:5433/db");
    assert_eq!(t.pg_config().get_hosts(), [Host::Unix("/tmp/dir".into())]);
    assert!(
        t.redacted().contains("%2Ftmp%2Fdir:5433"),
        "{}",
        t.redacted()
    );
    let t = parse("postgres:///db?host=/var/run/postgresql");
    assert_eq!(
        t.pg_config().get_hosts(),
        [Host::Unix("/var/run/postgresql".into())]
    );
    // The redacted form parses back to the same target.
    let again = parse(&t.redacted());
    assert_eq!(again.hosts(), t.hosts());
}

#[test]
fn all_five_sslmodes_in_both_forms() {
    for mode in SslMode::ALL {
        let t = parse(&format!(
            "postgres://u@h/db?sslmode={mode}&sslrootcert=/ca.pem"
        ));
        assert_eq!(t.ssl_mode(), mode);
        assert_eq!(
            t.pg_config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let t = parse(&format!("host=h sslmode={mode}"));
        assert_eq!(t.ssl_mode(), mode);
        assert_eq!(
            t.redacted(),
            format!("postgres://h:5432/?sslmode={mode}").replace(":5432", "")
        );
    }
}

#[test]
fn bad_sslmode_is_rejected_with_the_five() {
    let e = DbTarget::parse("postgres://u@h/db?sslmode=verify").unwrap_err();
    assert!(e.to_string().contains("verify"), "{e}");
    assert!(e.fix().contains("verify-ca or verify-full"), "{}", e.fix());
    assert!(DbTarget::parse("host=h sslmode=VERIFY-FULL").is_err());
}

#[test]
fn sslrootcert_is_ours() {
    let t = parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem");
    assert_eq!(t.ssl_root_cert(), Some(Path::new("/etc/ca.pem")));
    let t = parse("host=h sslrootcert=/etc/ca.pem sslmode=verify-ca");
    assert_eq!(t.ssl_root_cert(), Some(Path::new("/etc/ca.pem")));
    assert!(t.redacted().contains("sslrootcert=%2Fetc%2Fca.pem"));
}

#[test]
fn unsupported_tls_parameters_are_rejected_not_ignored() {
    for p in [
        "sslcert=/c.pem",
        "sslkey=/k.pem",
        "sslcrl=/x",
        "sslnegotiation=direct",
    ] {
        let e = DbTarget::parse(&format!("postgres://u@h/db?{p}")).unwrap_err();
        let key = p.split('=').next().unwrap();
        assert!(e.to_string().contains(key), "{e}");
        assert!(e.fix().contains("remove"), "{}", e.fix());
    }
}

#[test]
fn passthrough_parameters_reach_tokio_postgres() {
    let t = parse(
        "postgres://u@h/db?application_name=svc&connect_timeout=3&target_session_attrs=read-write",
    );
    assert_eq!(t.pg_config().get_application_name(), Some("svc"));
    assert_eq!(
        t.pg_config().get_connect_timeout(),
        Some(&std::time::Duration::from_secs(3))
    );
    let e = DbTarget::parse("postgres://u@h/db?target_session_attrs=sometimes").unwrap_err();
    assert!(e.to_string().contains("target_session_attrs"), "{e}");
    assert!(e.fix().contains("prefer-standby"), "{}", e.fix());
}

#[test]
fn every_target_session_attrs_value_parses_in_both_syntaxes() {
    use crate::config::SessionAttrs;
    use tokio_postgres::config::TargetSessionAttrs as T;
    assert_eq!(
        parse("postgres://u@h/db").session_attrs(),
        SessionAttrs::Any
    );
    for a in SessionAttrs::ALL {
        let url = parse(&format!(
            "postgres://u@h1:5432,h2:5433/db?target_session_attrs={a}"
        ));
        let kv = parse(&format!(
            "host=h1,h2 port=5432,5433 target_session_attrs={a}"
        ));
        assert_eq!(url.session_attrs(), a);
        assert_eq!(kv.session_attrs(), a);
        // The three tokio-postgres knows ride along in pg_config(); the others stay Any there.
        let want = match a {
            SessionAttrs::ReadWrite => T::ReadWrite,
            SessionAttrs::ReadOnly => T::ReadOnly,
            _ => T::Any,
        };
        assert_eq!(url.pg_config().get_target_session_attrs(), want, "{a}");
        // Shown back in the redacted form.
        assert!(
            url.redacted()
                .contains(&format!("target_session_attrs={a}")),
            "{}",
            url.redacted()
        );
    }
}

#[test]
fn unknown_parameter_named_only_when_close_to_a_known_one() {
    let e = DbTarget::parse("postgres://u@h/db?sslmod=require").unwrap_err();
    assert!(e.to_string().contains("did you mean sslmode"), "{e}");
    let e = DbTarget::parse("host=h hunter2isme=1").unwrap_err();
    assert!(!e.to_string().contains("hunter2isme"), "{e}");
}

#[test]
fn structural_errors() {
    for bad in [
        "",
        "mysql://u@h/db",
        "postgres://",
        "postgres:///db",
        "postgres://u@h:0/db",
        "postgres://u@h:99999/db",
        "postgres://u@[::1/db",
        "postgres://u@a,,b/db",
        "postgres://u@h/db?sslmode",
        "postgres://u@a,b,c/db?port=1,2",
        "host=h password='unterminated",
        "host=h dbname",
        "=x",
        "host=",
    ] {
        let e = DbTarget::parse(bad).expect_err(bad);
        assert!(!e.fix().is_empty(), "{bad}");
    }
}

#[test]
fn debug_and_display_never_show_the_password() {
    let t = parse(&format!("postgres://app:{PW_ENC}@h/db"));
    let dbg = format!("{t:?}");
    assert!(dbg.contains("password: Some(***)"), "{dbg}");
    assert!(dbg.contains("hosts") && dbg.contains("ssl_mode"), "{dbg}");
    for shown in [
        dbg,
        t.to_string(),
        t.redacted(),
        format!("{:?}", t.password()),
    ] {
        assert!(
            !shown.contains(PW) && !shown.contains(PW_ENC) && !shown.contains("S3cr3t"),
            "{shown}"
        );
    }
    assert_eq!(t.redacted(), "postgres://app:***@h:5432/db?sslmode=prefer");
    assert_eq!(format!("{}", Secret::new("x")), "***");
}

/// Malformed strings that contain the password in every position a typo can put it.
fn malformed_with_password() -> Vec<String> {
    let p = "hunter2-S3cr3t";
    vec![
        format!("postgres://app:{p}"),
        format!("postgres://app:{p}/db"),
        format!("postgres://app:{p}@"),
        format!("postgres://app:{p}@h:x/db"),
        format!("postgres://app:{p}@h/db?sslmode={p}"),
        format!("postgres://app:{p}@h/db?{p}"),
        format!("postgres://app:{p}@h/db?{p}=1"),
        format!("postgres://app:{p}@[::1/db"),
        format!("postgres://app:pa/{p}@h/db"),
        format!("postgres://app:{p}@h:5432,/db"),
        format!("postgres://app:{p}%FF@h/db"),
        format!("postgresql://{p}@"),
        format!("postgres://{p}:{p}@h:{p}/db"),
        format!("mysql://app:{p}@h/db"),
        format!("host=h password={p} {p}"),
        format!("host=h password='{p}"),
        format!("host=h password={p} sslmode={p}"),
        format!("host=h password = {p} port={p}"),
        format!("password={p}"),
        format!("host=h password={p} {p}=1"),
        format!("{p}"),
        format!("app:{p}@h/db"),
    ]
}

#[test]
fn errors_and_redacted_inputs_never_contain_the_password() {
    for bad in malformed_with_password() {
        let e = DbTarget::parse(&bad).expect_err(&bad);
        let shown = format!("{e} {} {e:?}", e.fix());
        assert!(
            !shown.contains("hunter2") && !shown.contains("S3cr3t"),
            "{bad} -> {shown}"
        );
        let r = redact_unparsed(&bad);
        assert!(
            !r.contains("hunter2") && !r.contains("S3cr3t"),
            "{bad} -> {r}"
        );
    }
}

#[test]
fn redact_unparsed_keeps_what_is_safe() {
    assert_eq!(
        redact_unparsed("postgres://u:pw@h:x/db"),
        "postgres://***@h:x/db"
    );
    assert_eq!(redact_unparsed("postgres://u:pw/db"), "postgres://***/db");
    assert_eq!(
        redact_unparsed("host=h password='a b' port=x"),
        "host=h password=*** *** port=x"
    );
    assert_eq!(
        redact_unparsed("host=h oops sslmode=bad"),
        "host=h *** sslmode=bad"
    );
}
