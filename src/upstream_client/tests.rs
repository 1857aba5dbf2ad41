use super::*;

const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

#[test]
fn scram_sha256_rfc7677_vector() {
    let mut s = Scram::new("user", "pencil", CLIENT_NONCE);
    assert_eq!(s.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
    let client_final = s.client_final(SERVER_FIRST).unwrap();
    assert_eq!(
        client_final,
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    s.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        .unwrap();
    let err = s
        .verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        .unwrap_err();
    assert!(err.contains("does not match"), "{err}");
    assert!(s.verify_server_final("e=invalid-proof").is_err());
}

#[test]
fn scram_rejects_bad_server_first() {
    let mut s = Scram::new("user", "pencil", CLIENT_NONCE);
    // The server's nonce must extend ours.
    let other = SERVER_FIRST.replace("r=rOpr", "r=XXpr");
    assert!(s.client_final(&other).unwrap_err().contains("nonce"));
    let weak = SERVER_FIRST.replace("i=4096", "i=1");
    assert!(s.client_final(&weak).unwrap_err().contains("iterations"));
    assert!(s.client_final("e=unknown-user").is_err());
}

#[test]
fn scram_escapes_user_names() {
    let s = Scram::new("a=b,c", "p", "n");
    assert_eq!(s.client_first(), "n,,n=a=3Db=2Cc,r=n");
}

#[test]
fn nonces_differ() {
    assert_ne!(client_nonce(), client_nonce());
    assert_eq!(B64.decode(client_nonce()).unwrap().len(), 24);
}

#[test]
fn ok_zero_becomes_an_error_with_code() {
    let reply = rawdoc! { "ok": 0.0, "errmsg": "no", "code": 13, "codeName": "Unauthorized" };
    let err = check_ok("h:1", "find", reply).unwrap_err();
    assert_eq!(err.code(), Some(13));
    assert_eq!(err.code_name(), Some("Unauthorized"));
    assert!(err.to_string().contains("find failed"), "{err}");
    assert!(check_ok("h:1", "ping", rawdoc! { "ok": 1 }).is_ok());
    assert!(check_ok("h:1", "ping", rawdoc! { "x": 1 }).is_err());
}

/// A server on a socket pair: checks request ids increment and the
/// reply is matched and returned.
#[tokio::test]
async fn round_trip_over_a_stream() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut ids = Vec::new();
        while ids.len() < 2 {
            match mongotap_proto::decode(&mut buf, MAX_MESSAGE_LEN).unwrap() {
                Some(f) => {
                    ids.push(f.header.request_id);
                    let body = rawdoc! { "ok": 1, "n": f.header.request_id };
                    let out = op_msg::encode(100, f.header.request_id, 0, &body, &[]);
                    b.write_all(&out).await.unwrap();
                }
                None => {
                    b.read_buf(&mut buf).await.unwrap();
                }
            }
        }
        ids
    });
    let mut c = UpstreamClient::new(Box::new(a), "test");
    let r1 = c
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .unwrap();
    let r2 = c
        .command(&rawdoc! { "ping": 1, "$db": "admin" })
        .await
        .unwrap();
    assert_eq!(r1.get_i32("n").unwrap() + 1, r2.get_i32("n").unwrap());
    assert_eq!(server.await.unwrap(), vec![1, 2]);
}
