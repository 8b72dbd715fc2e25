//! Distributed traces on real backends: the five services export their spans over OTLP to
//! a collector inside this test, and one `CreateTweet` that carries our `traceparent`
//! becomes one trace: the tweet service's call, the relay's publish, and the consumers of
//! the event in other services, with every parent link unbroken across Kafka.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::CreateTweetRequest;

const SERVICES: [&str; 5] = ["tweet", "follower", "timeline", "tagger", "recommendation"];

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
}

/// An OTLP trace collector that remembers every span.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Got>>>);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Got {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The spans of `trace` whose parent is neither `root` nor another span of the trace.
fn orphans<'a>(spans: &'a [Got], trace: &str, root: &str) -> Vec<&'a Got> {
    let ids: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .map(|s| s.span_id.as_str())
        .collect();
    spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .filter(|s| s.parent_id != root && !ids.contains(s.parent_id.as_str()))
        .collect()
}

#[tokio::test]
async fn one_post_is_one_trace_across_services_and_kafka() {
    let _serial = serial().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream_of(listener)),
    );
    // The children read the standard variables (this binary's only test sets them).
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://{collector_addr}"),
    );
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
    std::env::set_var("OTEL_TRACES_SAMPLER", "parentbased_always_on");

    let Some(b) = AppBackends::start("tracing").await else {
        return;
    };
    let mut instances = Vec::new();
    for s in SERVICES {
        instances.push(b.serve(s, &[], Stdio::inherit()).await);
    }
    let mesh = b.admin_mesh(&SERVICES).await;
    follow(&mesh, "alice", "bob").await;

    // The test is the root of the trace: its span id is the tweet call's parent.
    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    let root = format!("{:016x}", rand::random::<u64>() | 1);
    let mut request = tonic::Request::new(CreateTweetRequest {
        author: "bob".into(),
        text: "tracing the pipeline #rustlang".into(),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{root}-01").parse().unwrap(),
    );
    TweetServiceClient::new(mesh.channel("tweet"))
        .create_tweet(request)
        .await
        .expect("post");

    // Every span of the trace arrives within a few export rounds; the consumers of both
    // events run in tweet, timeline, tagger and recommendation.
    let complete = eventually(Duration::from_secs(30), || async {
        let spans = collector.0.lock().unwrap().clone();
        let services: BTreeSet<&str> = spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .map(|s| s.service.as_str())
            .collect();
        let consumed: BTreeSet<&str> = spans
            .iter()
            .filter(|s| s.trace_id == trace && s.name.starts_with("consume "))
            .map(|s| s.name.as_str())
            .collect();
        services.len() >= 4
            && consumed.contains("consume tweet-created.v1")
            && consumed.contains("consume tweet-tagged.v1")
            && orphans(&spans, &trace, &root).is_empty()
    })
    .await;
    let spans: Vec<Got> = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect();
    let mut by_service: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &spans {
        by_service
            .entry(s.service.as_str())
            .or_default()
            .push(s.name.as_str());
    }
    assert!(
        complete,
        "one trace with spans from at least four services, consumers of both events, and no \
         broken parent link; got {by_service:#?}, orphans {:#?}",
        orphans(&spans, &trace, &root)
    );
    // The consumers' spans hang from a publish span of another service (the outbox
    // relay's, or the tagger's own for the event it derives): the link crosses Kafka.
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for consume in spans.iter().filter(|s| s.name.starts_with("consume ")) {
        let parent = by_id
            .get(consume.parent_id.as_str())
            .unwrap_or_else(|| panic!("{consume:?} has its parent in the trace"));
        assert!(
            parent.name.starts_with("publish ") && parent.service != consume.service,
            "{consume:?} follows a publish span of another service, not {parent:?}"
        );
    }
    assert!(
        spans.iter().any(
            |s| s.service == "tweet" && s.name == "/starling.tweet.v1.TweetService/CreateTweet"
        ),
        "the tweet service's server span: {by_service:#?}"
    );
    drop(instances);
    server.abort();
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    })
}
