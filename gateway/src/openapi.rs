//! `GET /openapi.json`: the OpenAPI 3.1 document of the JSON API, generated from the
//! handlers' `#[utoipa::path]` attributes and the types they take and answer. The `/api`
//! routes are registered through [`api_routes`], which adds each route and its
//! documentation in one step, so no route can be served undocumented.

use axum::extract::State;
use axum::Json;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{api, auth, mesh_view, stream, traces, AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Starling gateway",
        description = "The JSON API of the Starling gateway (see gateway/API.md). Writes act as the bearer token's user only; reads are public.",
        version = "1"
    ),
    modifiers(&BearerToken),
    tags(
        (name = "accounts", description = "sign-up, sign-in, sign-out"),
        (name = "tweets"), (name = "users"), (name = "timelines"), (name = "recommendations"),
        (name = "traces", description = "the last traces, kept in memory by `starling up` only; clients on the gateway's machine only"),
        (name = "admin", description = "the live mesh view; clients on the gateway's machine only"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the handlers' `security(...)` name.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("the token sign-up or sign-in answers"))
                        .build(),
                ),
            );
    }
}

/// Every `/api` route with its documentation.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::signup))
        .routes(routes!(auth::signin))
        .routes(routes!(auth::signout))
        .routes(routes!(auth::stream_ticket))
        .routes(routes!(auth::me))
        .routes(routes!(api::create_tweet))
        .routes(routes!(api::get_tweet))
        .routes(routes!(api::get_user))
        .routes(routes!(api::user_tweets))
        .routes(routes!(api::user_timeline))
        .routes(routes!(stream::timeline_stream))
        .routes(routes!(api::followers))
        .routes(routes!(api::following))
        .routes(routes!(api::recommendations))
        .routes(routes!(api::follow))
        .routes(routes!(api::unfollow))
        .routes(routes!(api::record_engagement))
        .routes(routes!(api::tags))
        .routes(routes!(traces::list))
        .routes(routes!(traces::get))
        .routes(routes!(mesh_view::mesh))
}

/// `GET /openapi.json`.
pub async fn openapi_json(
    State(doc): State<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}
