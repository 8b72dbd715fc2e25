//! The JSON routes under `/api`: each one checks its input, calls a service through the
//! mesh (`XServiceClient::new(ctx.mesh.channel("x"))`) and reshapes the answer as JSON.
//!
//! The gateway holds no application state of its own (accounts aside, see `auth.rs`): the
//! services own the data and the validation rules, and their INVALID_ARGUMENT messages are
//! passed to the client as they are. What the gateway adds is authorisation (the acting
//! user is the token's user), JSON-friendly shapes (64-bit ids as decimal strings, since a
//! JavaScript number cannot hold them; timestamps as RFC 3339) and, for the timeline
//! service, the `x-user-id` header its consistent-hash balancing keys on.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use starling_discovery::IDEMPOTENCY_KEY;
use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::{
    FollowRequest, GetFollowCountsRequest, GetUserRequest, ListFollowersRequest,
    ListFollowingRequest, UnfollowRequest,
};
use starling_proto::recommendation::v1::recommendation_service_client::RecommendationServiceClient;
use starling_proto::recommendation::v1::{
    EngagementKind, RecommendRequest, RecordEngagementRequest,
};
use starling_proto::tagger::v1::tagger_service_client::TaggerServiceClient;
use starling_proto::tagger::v1::ListTagsRequest;
use starling_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use starling_proto::timeline::v1::{GetHomeTimelineRequest, GetHomeTimelineResponse};
use starling_proto::tweet::v1::tweet_service_client::TweetServiceClient;
use starling_proto::tweet::v1::{CreateTweetRequest, GetTweetRequest, ListUserTweetsRequest};
use starling_runtime::{check_user, ServiceContext};

use crate::auth::{ensure_self, AuthUser};
use crate::errors::ApiError;
use crate::AppState;

/// The header the timeline service's consistent-hash balancing reads.
pub const USER_HEADER: &str = "x-user-id";

/// `Json<T>` whose rejection is an [`ApiError`] (400 with a JSON body) instead of axum's
/// plain-text answer.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > crate::JSON_BODY_LIMIT as u64) {
            drain(req.into_body()).await;
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("JSON body larger than {} bytes", crate::JSON_BODY_LIMIT),
            ));
        }
        let r: Result<Json<T>, JsonRejection> = Json::from_request(req, state).await;
        Ok(ApiJson(r?.0))
    }
}

/// Bytes of a refused body read and dropped before answering, at most.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// Time spent reading a refused body, at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops what a client sends of a body that is refused for its size (up to
/// [`DRAIN_LIMIT`] and [`DRAIN_TIME`]). Answering without reading it would close the
/// connection with its bytes unread, and the kernel then resets it, often before the
/// client has read the answer: the client sees a broken connection instead of the 413.
async fn drain(body: axum::body::Body) {
    use futures::StreamExt as _;
    let mut data = body.into_data_stream();
    let mut read = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = data.next().await {
            read += chunk.len();
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// A tweet as the API shows it (ids are decimal strings: JavaScript numbers cannot hold
/// 64-bit ids).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TweetJson {
    pub id: String,
    pub author: String,
    pub text: String,
    pub created_at: String,
    pub tags: Vec<String>,
}

impl From<starling_proto::tweet::v1::Tweet> for TweetJson {
    fn from(t: starling_proto::tweet::v1::Tweet) -> Self {
        let created_at = t
            .created_at
            .map(|ts| rfc3339(ts.seconds, ts.nanos))
            .unwrap_or_default();
        Self {
            id: t.id.to_string(),
            author: t.author,
            text: t.text,
            created_at,
            tags: t.tags,
        }
    }
}

/// Formats a Unix time as RFC 3339 in UTC (`2024-05-01T12:34:56.789Z`; milliseconds only
/// when non-zero).
pub fn rfc3339(seconds: i64, nanos: i32) -> String {
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    let millis = nanos.clamp(0, 999_999_999) / 1_000_000;
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
    }
}

/// Parses a tweet id given as a decimal string (or, leniently, a JSON number).
fn parse_id(field: &str, raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!("{field} must be a decimal tweet id (got {raw:?})"))
    })
}

/// A tweet id: a decimal string, or (leniently) a JSON number.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum IdValue {
    Text(String),
    Number(u64),
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    Ok(q?.0)
}

pub(crate) fn user_path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let user = p?.0;
    check_user("user", &user)?;
    Ok(user)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TweetPage {
    pub tweets: Vec<TweetJson>,
    pub next_page_token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    pub users: Vec<String>,
    pub next_page_token: String,
}

/// One page of `user`'s home timeline, with the `x-user-id` routing header set.
pub async fn home_timeline(
    ctx: &ServiceContext,
    user: &str,
    page_size: u32,
    page_token: String,
) -> Result<GetHomeTimelineResponse, ApiError> {
    check_user("user", user)?;
    let mut req = tonic::Request::new(GetHomeTimelineRequest {
        user: user.to_string(),
        page_size,
        page_token,
    });
    let value = user
        .parse()
        .map_err(|_| ApiError::bad_request(format!("user {user:?} is not a valid header value")))?;
    req.metadata_mut().insert(USER_HEADER, value);
    Ok(TimelineServiceClient::new(ctx.mesh.channel("timeline"))
        .get_home_timeline(req)
        .await?
        .into_inner())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PostTweet {
    pub text: String,
    pub author: Option<String>,
}

/// Counts one write against `user`'s budget (see `writes.rs`): 429 with `Retry-After`
/// when it is spent.
pub(crate) fn take_write(state: &AppState, user: &str) -> Result<(), ApiError> {
    state.writes.take(user).map_err(|wait| {
        ApiError::too_many_requests(format!(
            "too many writes by {user}: at most {} at once and {} a second; try again in {} s",
            crate::writes::BURST,
            crate::writes::PER_SECOND,
            wait.as_secs().max(1)
        ))
        .retry_after(wait)
    })
}

/// `POST /api/tweets`. An `Idempotency-Key` header is passed on (a client that sends the
/// post again with it gets the first one's tweet); without one the gateway names the post
/// itself, so the mesh may resend it to another replica when the first one dies mid-call.
#[utoipa::path(post, path = "/api/tweets", tag = "tweets", request_body = PostTweet,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: the same key and text again answer the first tweet")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the tweet as stored", body = TweetJson),
        (status = 400, description = "bad input", body = ErrorBody),
        (status = 401, description = "no, or a bad, token", body = ErrorBody),
        (status = 403, description = "another author", body = ErrorBody),
        (status = 409, description = "the idempotency key was used for another text", body = ErrorBody),
        (status = 429, description = "over the user's write budget", body = ErrorBody),
    ))]
pub async fn create_tweet(
    State(state): State<AppState>,
    AuthUser(me): AuthUser,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<PostTweet>,
) -> Result<impl IntoResponse, ApiError> {
    let author = ensure_self(&me, body.author.as_deref(), "author")?;
    take_write(&state, &me)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        Some(v) => tonic::metadata::MetadataValue::try_from(v.as_bytes()).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 128 visible ASCII characters",
            )
        })?,
        None => tonic::metadata::MetadataValue::try_from(format!(
            "gw-{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        ))
        .map_err(|_| ApiError::internal("cannot name the post"))?,
    };
    let mut req = tonic::Request::new(CreateTweetRequest {
        author,
        text: body.text,
    });
    req.metadata_mut().insert(IDEMPOTENCY_KEY, key);
    let tweet = TweetServiceClient::new(state.ctx.mesh.channel("tweet"))
        .create_tweet(req)
        .await?
        .into_inner()
        .tweet
        .ok_or_else(|| ApiError::internal("the tweet service answered without a tweet"))?;
    Ok((StatusCode::CREATED, Json(TweetJson::from(tweet))))
}

/// `GET /api/tweets/{id}`.
#[utoipa::path(get, path = "/api/tweets/{id}", tag = "tweets",
    params(("id" = String, Path, description = "a tweet id (decimal)")),
    responses(
        (status = 200, description = "the tweet", body = TweetJson),
        (status = 400, description = "not a tweet id", body = ErrorBody),
        (status = 404, description = "no such tweet", body = ErrorBody),
    ))]
pub async fn get_tweet(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TweetJson>, ApiError> {
    let id = parse_id("id", &id?.0)?;
    let tweet = TweetServiceClient::new(state.ctx.mesh.channel("tweet"))
        .get_tweet(GetTweetRequest { id })
        .await?
        .into_inner()
        .tweet
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no tweet {id}")))?;
    Ok(Json(tweet.into()))
}

/// `GET /api/users/{user}`.
#[utoipa::path(get, path = "/api/users/{user}", tag = "users",
    params(("user" = String, Path, description = "a user name")),
    responses(
        (status = 200, description = "the user's follow counts", body = Profile),
        (status = 400, description = "not a user name", body = ErrorBody),
        (status = 404, description = "nobody signed up with this name", body = ErrorBody),
    ))]
pub async fn get_user(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<Profile>, ApiError> {
    let user = user_path(user)?;
    let mut users = FollowerServiceClient::new(state.ctx.mesh.channel("follower"));
    let mut counter = users.clone();
    // 404 for a name nobody signed up with.
    let (registered, counts) = futures::join!(
        users.get_user(GetUserRequest { user: user.clone() }),
        counter.get_follow_counts(GetFollowCountsRequest { user: user.clone() })
    );
    registered?;
    let counts = counts?.into_inner();
    Ok(Json(Profile {
        user,
        followers: counts.followers,
        following: counts.following,
    }))
}

/// `GET /api/users/{user}/tweets`.
#[utoipa::path(get, path = "/api/users/{user}/tweets", tag = "tweets",
    params(("user" = String, Path, description = "a user name"), PageQuery),
    responses(
        (status = 200, description = "the user's tweets, newest first", body = TweetPage),
        (status = 400, description = "bad input", body = ErrorBody),
    ))]
pub async fn user_tweets(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<TweetPage>, ApiError> {
    let user = user_path(user)?;
    let q = query(q)?;
    let page = TweetServiceClient::new(state.ctx.mesh.channel("tweet"))
        .list_user_tweets(ListUserTweetsRequest {
            user,
            page_size: q.page_size.unwrap_or(0),
            page_token: q.page_token.unwrap_or_default(),
        })
        .await?
        .into_inner();
    Ok(Json(TweetPage {
        tweets: page.tweets.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// `GET /api/users/{user}/timeline`.
#[utoipa::path(get, path = "/api/users/{user}/timeline", tag = "timelines",
    params(("user" = String, Path, description = "a user name"), PageQuery),
    responses(
        (status = 200, description = "the user's home timeline, newest first", body = TweetPage),
        (status = 400, description = "bad input", body = ErrorBody),
    ))]
pub async fn user_timeline(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<TweetPage>, ApiError> {
    let user = user_path(user)?;
    let q = query(q)?;
    let page = home_timeline(
        &state.ctx,
        &user,
        q.page_size.unwrap_or(0),
        q.page_token.unwrap_or_default(),
    )
    .await?;
    Ok(Json(TweetPage {
        tweets: page.tweets.into_iter().map(Into::into).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// `GET /api/users/{user}/followers`.
#[utoipa::path(get, path = "/api/users/{user}/followers", tag = "users",
    params(("user" = String, Path, description = "a user name"), PageQuery),
    responses(
        (status = 200, description = "who follows the user", body = UserPage),
        (status = 400, description = "bad input", body = ErrorBody),
    ))]
pub async fn followers(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    let user = user_path(user)?;
    let q = query(q)?;
    let page = FollowerServiceClient::new(state.ctx.mesh.channel("follower"))
        .list_followers(ListFollowersRequest {
            user,
            page_size: q.page_size.unwrap_or(0),
            page_token: q.page_token.unwrap_or_default(),
        })
        .await?
        .into_inner();
    Ok(Json(UserPage {
        users: page.users,
        next_page_token: page.next_page_token,
    }))
}

/// `GET /api/users/{user}/following`.
#[utoipa::path(get, path = "/api/users/{user}/following", tag = "users",
    params(("user" = String, Path, description = "a user name"), PageQuery),
    responses(
        (status = 200, description = "whom the user follows", body = UserPage),
        (status = 400, description = "bad input", body = ErrorBody),
    ))]
pub async fn following(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<UserPage>, ApiError> {
    let user = user_path(user)?;
    let q = query(q)?;
    let page = FollowerServiceClient::new(state.ctx.mesh.channel("follower"))
        .list_following(ListFollowingRequest {
            user,
            page_size: q.page_size.unwrap_or(0),
            page_token: q.page_token.unwrap_or_default(),
        })
        .await?
        .into_inner();
    Ok(Json(UserPage {
        users: page.users,
        next_page_token: page.next_page_token,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct FollowBody {
    pub followee: String,
    pub follower: Option<String>,
}

/// `POST /api/follows`.
#[utoipa::path(post, path = "/api/follows", tag = "users", request_body = FollowBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "whether the graph changed", body = Changed),
        (status = 400, description = "bad input", body = ErrorBody),
        (status = 401, description = "no, or a bad, token", body = ErrorBody),
        (status = 403, description = "another follower", body = ErrorBody),
        (status = 404, description = "the followee never signed up", body = ErrorBody),
        (status = 429, description = "over the user's write budget", body = ErrorBody),
    ))]
pub async fn follow(
    State(state): State<AppState>,
    AuthUser(me): AuthUser,
    ApiJson(body): ApiJson<FollowBody>,
) -> Result<Json<Changed>, ApiError> {
    let follower = ensure_self(&me, body.follower.as_deref(), "follower")?;
    take_write(&state, &me)?;
    let changed = FollowerServiceClient::new(state.ctx.mesh.channel("follower"))
        .follow(FollowRequest {
            follower,
            followee: body.followee,
        })
        .await?
        .into_inner()
        .changed;
    Ok(Json(Changed { changed }))
}

/// `DELETE /api/follows/{followee}`.
#[utoipa::path(delete, path = "/api/follows/{followee}", tag = "users",
    params(("followee" = String, Path, description = "a user name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "whether the graph changed", body = Changed),
        (status = 400, description = "bad input", body = ErrorBody),
        (status = 401, description = "no, or a bad, token", body = ErrorBody),
        (status = 429, description = "over the user's write budget", body = ErrorBody),
    ))]
pub async fn unfollow(
    State(state): State<AppState>,
    AuthUser(me): AuthUser,
    followee: Result<Path<String>, PathRejection>,
) -> Result<Json<Changed>, ApiError> {
    let followee = followee?.0;
    take_write(&state, &me)?;
    let changed = FollowerServiceClient::new(state.ctx.mesh.channel("follower"))
        .unfollow(UnfollowRequest {
            follower: me,
            followee,
        })
        .await?
        .into_inner()
        .changed;
    Ok(Json(Changed { changed }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecommendQuery {
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recommendation {
    pub tweet: Option<TweetJson>,
    pub score: f64,
    pub reasons: Vec<String>,
}

/// `GET /api/users/{user}/recommendations`.
#[utoipa::path(get, path = "/api/users/{user}/recommendations", tag = "recommendations",
    params(("user" = String, Path, description = "a user name"), RecommendQuery),
    responses(
        (status = 200, description = "ranked tweets with the reasons that explain them", body = Recommendations),
        (status = 400, description = "bad input", body = ErrorBody),
    ))]
pub async fn recommendations(
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
    q: Result<Query<RecommendQuery>, QueryRejection>,
) -> Result<Json<Recommendations>, ApiError> {
    let user = user_path(user)?;
    let q = q?.0;
    let items: Vec<Recommendation> =
        RecommendationServiceClient::new(state.ctx.mesh.channel("recommendation"))
            .recommend(RecommendRequest {
                user,
                limit: q.limit.unwrap_or(0),
            })
            .await?
            .into_inner()
            .items
            .into_iter()
            .map(|r| Recommendation {
                tweet: r.tweet.map(Into::into),
                score: r.score,
                reasons: r.reasons,
            })
            .collect();
    Ok(Json(Recommendations { items }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EngagementBody {
    pub tweet_id: IdValue,
    pub kind: String,
    pub user: Option<String>,
}

/// `POST /api/engagements`.
#[utoipa::path(post, path = "/api/engagements", tag = "recommendations", request_body = EngagementBody,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "recorded; recommendations follow shortly", body = Accepted),
        (status = 400, description = "bad input", body = ErrorBody),
        (status = 401, description = "no, or a bad, token", body = ErrorBody),
        (status = 403, description = "another user", body = ErrorBody),
        (status = 429, description = "over the user's write budget", body = ErrorBody),
    ))]
pub async fn record_engagement(
    State(state): State<AppState>,
    AuthUser(me): AuthUser,
    ApiJson(body): ApiJson<EngagementBody>,
) -> Result<impl IntoResponse, ApiError> {
    let user = ensure_self(&me, body.user.as_deref(), "user")?;
    take_write(&state, &me)?;
    let tweet_id = match body.tweet_id {
        IdValue::Text(s) => parse_id("tweet_id", &s)?,
        IdValue::Number(n) => n,
    };
    let kind = match body.kind.as_str() {
        "click" => EngagementKind::Click,
        "like" => EngagementKind::Like,
        other => {
            return Err(ApiError::bad_request(format!(
                "kind must be \"click\" or \"like\" (got {other:?})"
            )))
        }
    };
    let event_id = RecommendationServiceClient::new(state.ctx.mesh.channel("recommendation"))
        .record_engagement(RecordEngagementRequest {
            user,
            tweet_id,
            kind: kind as i32,
        })
        .await?
        .into_inner()
        .event_id;
    Ok((StatusCode::ACCEPTED, Json(Accepted { event_id })))
}

/// `GET /api/tags`.
#[utoipa::path(get, path = "/api/tags", tag = "tweets",
    responses((status = 200, description = "every tag the tagger knows", body = Tags)))]
pub async fn tags(State(state): State<AppState>) -> Result<Json<Tags>, ApiError> {
    let tags = TaggerServiceClient::new(state.ctx.mesh.channel("tagger"))
        .list_tags(ListTagsRequest {})
        .await?
        .into_inner()
        .tags;
    Ok(Json(Tags { tags }))
}

/// A user's follow counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Profile {
    pub user: String,
    pub followers: u64,
    pub following: u64,
}

/// Whether a follow or unfollow changed the graph (false: it already was so).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Changed {
    pub changed: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recommendations {
    pub items: Vec<Recommendation>,
}

/// An engagement was recorded under this event id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub event_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Tags {
    pub tags: Vec<String>,
}

/// Every error answer: what went wrong, and for a 5xx the id under which the gateway
/// logged the details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Answers unknown `/api/...` paths with a JSON 404.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such API route: {}", uri.path()),
    )
}

/// Answers a known path with the wrong method with a JSON 405.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any path segment or JSON string as a tweet id: a number when it is one, a 400
        /// naming the field otherwise, never a panic.
        #[test]
        fn fuzz_tweet_ids(raw in "\\PC{0,24}|[0-9 ]{0,24}") {
            match parse_id("tweet_id", &raw) {
                Ok(id) => proptest::prop_assert_eq!(Some(id), raw.trim().parse::<u64>().ok()),
                Err(e) => {
                    proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                    proptest::prop_assert!(e.message.starts_with("tweet_id"));
                }
            }
        }

        /// Any time within ±3,000 years formats as RFC 3339 that reads back as itself.
        #[test]
        fn fuzz_rfc3339(seconds in -95_000_000_000i64..95_000_000_000, millis in 0i32..1000) {
            let text = rfc3339(seconds, millis * 1_000_000);
            proptest::prop_assert!(text.ends_with('Z'));
            proptest::prop_assert!(text.contains('T'));
            if (0..=253_402_300_799).contains(&seconds) {
                // Years 1970 to 9999: the fixed-width form.
                proptest::prop_assert!(text.len() == 20 || text.len() == 24, "{}", text);
            }
        }
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(1_714_566_896, 789_000_000),
            "2024-05-01T12:34:56.789Z"
        );
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn ids_are_strings_in_json() {
        let t = starling_proto::tweet::v1::Tweet {
            id: u64::MAX,
            author: "a".into(),
            text: "t".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            tags: vec!["books".into()],
        };
        let v = serde_json::to_value(TweetJson::from(t)).unwrap();
        assert_eq!(v["id"], "18446744073709551615");
        assert_eq!(v["created_at"], "1970-01-01T00:00:00Z");
        assert!(parse_id("id", "12x").is_err());
    }
}
