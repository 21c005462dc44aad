//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
//!
//! Written by hand (the server has few routes); `tests` check that its paths and methods
//! are exactly [`super::http::ROUTES`], and the server tests check that list against the
//! router.

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn phone_param() -> Value {
    json!({"name": "phone", "in": "path", "required": true,
           "description": "The contact's id exactly as Meta sent it (wa_id digits, or a business-scoped user id).",
           "schema": {"type": "string"}})
}

fn flow_id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": "The flow id.", "schema": {"type": "string"}})
}

fn version_param(name: &str, location: &str, description: &str) -> Value {
    json!({"name": name, "in": location, "required": true, "description": description,
           "schema": {"type": "integer", "minimum": 1}})
}

fn window_params() -> Value {
    json!([
        {"name": "from", "in": "query", "required": false, "description": "Unix milliseconds, inclusive", "schema": {"type": "integer"}},
        {"name": "to", "in": "query", "required": false, "description": "Unix milliseconds, exclusive", "schema": {"type": "integer"}}
    ])
}

fn admin(summary: &str, mut op: Value) -> Value {
    op["summary"] = json!(summary);
    op["security"] = json!([{"bearer": []}]);
    op["tags"] = json!(["admin"]);
    let responses = op["responses"].as_object_mut().expect("operations have responses");
    responses.insert("401".into(), error_response("Missing or wrong bearer token"));
    op
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "flowcore-server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The bundled WhatsApp bot server of flowcore. Admin endpoints take `Authorization: Bearer <organization api_token>` and only see that organization's data; another organization's conversation is 404."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"},
                    "diagnostics": {"type": "array", "items": {"type": "object"}}}}}},
                "Conversation": {"type": "object", "required": ["phone_number", "flow_id", "messages"], "properties": {
                    "phone_number": {"type": "string"},
                    "flow_id": {"type": ["string", "null"]},
                    "messages": {"type": "array", "items": {"type": "object", "required": ["type", "text", "timestamp"], "properties": {
                        "type": {"type": "string", "enum": ["user", "bot"]},
                        "text": {"type": "string"},
                        "timestamp": {"type": "string", "format": "date-time"}}}}}},
                "FlowVersions": {"type": "object", "required": ["flow_id", "latest", "versions"], "properties": {
                    "flow_id": {"type": "string"},
                    "latest": {"type": "integer"},
                    "versions": {"type": "array", "items": {"type": "object", "required": ["version", "published_at", "content_hash", "diagnostics"], "properties": {
                        "version": {"type": "integer"},
                        "published_at": {"type": "string", "format": "date-time"},
                        "content_hash": {"type": "string", "description": "Hex SHA-256 of the stored definition text"},
                        "diagnostics": {"type": "object", "required": ["errors", "warnings"], "properties": {
                            "errors": {"type": "integer"}, "warnings": {"type": "integer"}}}}}}}},
                "Changes": {"type": "object", "required": ["added", "removed", "changed"], "properties": {
                    "added": {"type": "array", "items": {"type": "string"}},
                    "removed": {"type": "array", "items": {"type": "string"}},
                    "changed": {"type": "array", "items": {"type": "string"}}}},
                "FlowDiff": {"type": "object", "required": ["flow_id", "from", "to", "nodes", "edges"], "properties": {
                    "flow_id": {"type": "string"}, "from": {"type": "integer"}, "to": {"type": "integer"},
                    "nodes": {"$ref": "#/components/schemas/Changes"},
                    "edges": {"$ref": "#/components/schemas/Changes"}}}
            }
        },
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "tags": ["operations"], "responses": {"200": {"description": "The process runs"}}}},
            "/readyz": {"get": {"summary": "Readiness: the store answers", "tags": ["operations"], "responses": {
                "200": {"description": "Ready"}, "503": error_response("Store unreachable")}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "tags": ["operations"], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/api/v1/whatsapp/webhook": {
                "get": {"summary": "Meta's subscription verification", "tags": ["webhook"], "parameters": [
                        {"name": "hub.mode", "in": "query", "required": true, "schema": {"type": "string", "enum": ["subscribe"]}},
                        {"name": "hub.verify_token", "in": "query", "required": true, "schema": {"type": "string"}},
                        {"name": "hub.challenge", "in": "query", "required": true, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "The challenge, as text/plain", "content": {"text/plain": {"schema": {"type": "string"}}}},
                                  "400": error_response("Mode is not subscribe, or a parameter is missing"),
                                  "403": error_response("Wrong verify token")}},
                "post": {"summary": "Meta's webhook deliveries (signed with X-Hub-Signature-256)", "tags": ["webhook"],
                    "parameters": [{"name": "X-Hub-Signature-256", "in": "header", "required": true, "schema": {"type": "string"}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": {"200": {"description": "Every message is durably in the inbox"},
                                  "401": error_response("Bad or missing signature"),
                                  "413": error_response("Body too large"),
                                  "503": error_response("Store unavailable; Meta will redeliver")}}
            },
            "/api/v1/conversations": {"get": admin("List conversations", json!({
                "parameters": [{"name": "skip", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                "responses": {"200": {"description": "{items, skip, limit, total}"}, "400": error_response("Bad paging")}}))},
            "/api/v1/conversations/{phone}": {"get": admin("A conversation's messages", json!({
                "parameters": [phone_param()],
                "responses": {"200": {"description": "The conversation", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Conversation"}}}},
                              "404": error_response("No such conversation in this organization")}}))},
            "/api/v1/conversations/{phone}/send": {"post": admin("Send a manual message (through the outbox)", json!({
                "parameters": [phone_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}}}},
                "responses": {"202": {"description": "Queued"}, "400": error_response("Bad body"), "404": error_response("No such conversation")}}))},
            "/api/v1/conversations/{phone}/close": {"post": admin("Close the conversation's sessions (ends a handoff)", json!({
                "parameters": [phone_param()],
                "responses": {"200": {"description": "Closed"}, "404": error_response("No such conversation")}}))},
            "/api/v1/conversations/{phone}/export": {"get": admin("Export a conversation", json!({
                "parameters": [phone_param(), {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv", "chat"]}}],
                "responses": {"200": {"description": "JSON (as GET conversation), CSV (timestamp,type,text,flow_id) or a .chat file for flowctl test"},
                              "400": error_response("Unknown format"), "404": error_response("No such conversation")}}))},
            "/api/v1/analytics/conversations": {"get": admin("Conversations per flow and per A/B variant", json!({
                "parameters": window_params(),
                "responses": {"200": {"description": "{total, active, per_flow, ab_tests, per_day}"}}}))},
            "/api/v1/analytics/metrics": {"get": admin("Message counts", json!({
                "parameters": window_params(),
                "responses": {"200": {"description": "{messages_in, messages_out, per_day, instance}"}}}))},
            "/api/v1/flows": {"post": admin("Publish a flow version", json!({
                "parameters": [{"name": "flow_id", "in": "query", "schema": {"type": "string"}, "description": "Overrides the flow JSON's id"}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"201": {"description": "{flow_id, version, warnings}"},
                              "400": error_response("No flow id"),
                              "422": error_response("The flow does not compile; error.diagnostics lists why")}}))},
            "/api/v1/flows/{id}/versions": {"get": admin("List a flow's versions, newest first", json!({
                "parameters": [flow_id_param()],
                "responses": {"200": {"description": "The versions", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowVersions"}}}},
                              "404": error_response("No such flow in this organization")}}))},
            "/api/v1/flows/{id}/versions/{n}": {"get": admin("One version's flow JSON, exactly as published", json!({
                "parameters": [flow_id_param(), version_param("n", "path", "The version.")],
                "responses": {"200": {"description": "The flow JSON", "content": {"application/json": {"schema": {"type": "object"}}}},
                              "400": error_response("The version is not a number"),
                              "404": error_response("No such flow or version in this organization")}}))},
            "/api/v1/flows/{id}/rollback": {"post": admin("Publish an older version again as the newest", json!({
                "parameters": [flow_id_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["version"],
                    "properties": {"version": {"type": "integer", "minimum": 1}}}}}},
                "responses": {"201": {"description": "{flow_id, version (the new one), rolled_back_to, content_hash}"},
                              "400": error_response("Bad body"),
                              "404": error_response("No such flow or version in this organization"),
                              "422": error_response("That version no longer compiles")}}))},
            "/api/v1/flows/{id}/diff": {"get": admin("Nodes and edges added, removed and changed between two versions", json!({
                "parameters": [flow_id_param(), version_param("from", "query", "The older version."), version_param("to", "query", "The newer version.")],
                "responses": {"200": {"description": "The changes of `to` against `from`; a node's canvas position is not compared",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FlowDiff"}}}},
                              "400": error_response("from or to is missing or not a number"),
                              "404": error_response("No such flow or version in this organization")}}))}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn document_paths_are_exactly_the_routes() {
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let routes: BTreeSet<_> =
            super::super::http::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(documented, routes);
    }
}
