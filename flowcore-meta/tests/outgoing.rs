//! Every builder's JSON, pinned by insta snapshots, and the bridge's outbound side.

use flowcore::{Choice, ListRow as FlowRow, ListSection as FlowSection, MediaKind};
use flowcore_meta::outgoing::*;
use flowcore_meta::to_outgoing;
use insta::assert_json_snapshot;
use serde_json::json;

fn to() -> Recipient {
    Recipient::phone("+1 (202) 555-0101").unwrap()
}

#[test]
fn text_snapshots() -> Result<(), BuildError> {
    assert_json_snapshot!("text", OutgoingMessage::new(to(), Text::new("Olá, tudo bem?")?));
    assert_json_snapshot!(
        "text_preview_reply_tracker",
        OutgoingMessage::new(to(), Text::new("Veja https://example.com")?.preview_url(true))
            .reply_to("wamid.RkFLRS9pbi0wMDAx")
            .callback_data("org=acme;conv=c-1;out=7")?
    );
    assert_json_snapshot!(
        "text_to_bsuid",
        OutgoingMessage::new(Recipient::user_id("US.1000000000000000777")?, Text::new("oi")?)
    );
    assert_json_snapshot!(
        "text_to_group",
        OutgoingMessage::new(Recipient::group("120363000000000001@g.us")?, Text::new("oi")?)
    );
    Ok(())
}

#[test]
fn media_snapshots() -> Result<(), BuildError> {
    assert_json_snapshot!(
        "image_link_caption",
        OutgoingMessage::new(
            to(),
            MediaMessage::image(MediaSource::link("https://cdn.example.com/p.jpg")?).caption("Produto")?
        )
    );
    assert_json_snapshot!(
        "audio_id",
        OutgoingMessage::new(to(), MediaMessage::audio(MediaSource::id("1450000000000015")?))
    );
    assert_json_snapshot!(
        "video_id",
        OutgoingMessage::new(to(), MediaMessage::video(MediaSource::id("1450000000000014")?).caption("Veja")?)
    );
    assert_json_snapshot!(
        "document_filename",
        OutgoingMessage::new(
            to(),
            MediaMessage::document(MediaSource::link("https://cdn.example.com/n.pdf")?)
                .caption("Nota")?
                .filename("nota.pdf")?
        )
    );
    assert_json_snapshot!(
        "sticker",
        OutgoingMessage::new(to(), MediaMessage::sticker(MediaSource::id("1450000000000017")?))
    );
    Ok(())
}

#[test]
fn location_contacts_reaction_read_snapshots() -> Result<(), BuildError> {
    assert_json_snapshot!(
        "location",
        OutgoingMessage::new(
            to(),
            LocationMessage::new(-23.5613991, -46.6565712)?.name("Loja")?.address("Av. Exemplo, 1000")?
        )
    );
    let card = ContactCard::new("Maria Exemplo")?
        .names("Maria", "Exemplo")?
        .company("Exemplo Ltda")?
        .phone("+1 202-555-0177", "CELL", Some("12025550177"))?
        .email("maria@example.com", "WORK")?
        .url("https://example.com", "WORK")?;
    assert_json_snapshot!("contacts", OutgoingMessage::new(to(), ContactsMessage::new([card])?));
    assert_json_snapshot!("reaction", OutgoingMessage::new(to(), Reaction::new("wamid.IN", "👍")?));
    assert_json_snapshot!("reaction_removed", OutgoingMessage::new(to(), Reaction::remove("wamid.IN")?));
    assert_json_snapshot!("mark_read", MarkRead::new("wamid.IN")?.to_json());
    assert_json_snapshot!("mark_read_typing", MarkRead::new("wamid.IN")?.typing_indicator().to_json());
    Ok(())
}

#[test]
fn interactive_snapshots() -> Result<(), BuildError> {
    let buttons = ReplyButtons::new(
        "Como posso ajudar?",
        [ReplyButton::new("sales", "Vendas")?, ReplyButton::new("support", "Suporte")?],
    )?
    .header(Header::text("Atendimento")?)
    .footer("Responda a qualquer hora")?;
    assert_json_snapshot!("buttons", OutgoingMessage::new(to(), buttons));
    let image_header = ReplyButtons::new("Gostou?", [ReplyButton::new("y", "Sim")?])?
        .header(Header::Image(MediaSource::link("https://cdn.example.com/h.png")?));
    assert_json_snapshot!("buttons_image_header", OutgoingMessage::new(to(), image_header));
    let list = ListMessage::new(
        "Escolha um departamento",
        "Ver opções",
        [
            ListSection::new(
                Some("Suporte".into()),
                [ListRow::new("tech", "Técnico")?.description("Problemas técnicos")?],
            )?,
            ListSection::new(
                Some("Vendas".into()),
                [ListRow::new("buy", "Comprar")?, ListRow::new("quote", "Orçamento")?],
            )?,
        ],
    )?
    .header("Menu")?
    .footer("Acme")?;
    assert_json_snapshot!("list", OutgoingMessage::new(to(), list));
    let cta = CtaUrl::new("Acompanhe seu pedido", "Rastrear", "https://example.com/track/1")?.footer("Acme")?;
    assert_json_snapshot!("cta_url", OutgoingMessage::new(to(), cta));
    Ok(())
}

#[test]
fn template_snapshots() -> Result<(), BuildError> {
    let template = Template::new("order_update", "pt_BR")?
        .component(TemplateComponent::header([TemplateParameter::document(
            MediaSource::link("https://cdn.example.com/n.pdf")?,
            Some("nota.pdf"),
        )]))
        .component(TemplateComponent::body([
            TemplateParameter::text("Ana")?,
            TemplateParameter::currency("R$ 49,90", "BRL", 49_900)?,
            TemplateParameter::date_time("1 de junho")?,
            TemplateParameter::named_text("order_id", "#1234")?,
        ]))
        .component(TemplateComponent::quick_reply_button(0, "CONFIRMAR_PEDIDO")?)
        .component(TemplateComponent::url_button(1, "track/1234")?);
    assert_json_snapshot!("template", OutgoingMessage::new(to(), template).callback_data("out=9")?);
    assert_json_snapshot!("template_bare", OutgoingMessage::new(to(), Template::new("hello_world", "en_US")?));
    Ok(())
}

fn err<T: std::fmt::Debug>(result: Result<T, BuildError>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn limits_table() {
    let b = |id: &str, title: &str| ReplyButton::new(id, title).unwrap();
    let row = |id: &str| ListRow::new(id, "Row").unwrap();
    let cases: Vec<(String, &str)> = vec![
        (err(Text::new("x".repeat(4097))), "text body is 4097 characters, the limit is 4096"),
        (err(Text::new("  ")), "text body must not be empty"),
        (err(ReplyButton::new("id", "")), "button title must not be empty"),
        (err(ReplyButton::new("id", "é".repeat(21))), "button title is 21 characters, the limit is 20"),
        (err(ReplyButton::new("i".repeat(257), "t")), "button id is 257 characters, the limit is 256"),
        (err(ReplyButton::new(" id", "t")), "button id must not start or end with whitespace"),
        (
            err(ReplyButtons::new("b", [b("1", "a"), b("2", "b"), b("3", "c"), b("4", "d")])),
            "buttons has 4 items, the limit is 3",
        ),
        (err(ReplyButtons::new("b", [])), "buttons needs at least 1 item(s)"),
        (err(ReplyButtons::new("b", [b("1", "a"), b("1", "b")])), "buttons[1].id \"1\" appears more than once"),
        (err(ReplyButtons::new("x".repeat(1025), [b("1", "a")])), "body is 1025 characters, the limit is 1024"),
        (err(Header::text("h".repeat(61))), "header is 61 characters, the limit is 60"),
        (
            err(ReplyButtons::new("b", [b("1", "a")]).unwrap().footer("f".repeat(61))),
            "footer is 61 characters, the limit is 60",
        ),
        (err(ListRow::new("r".repeat(201), "t")), "row id is 201 characters, the limit is 200"),
        (err(ListRow::new("r", "t".repeat(25))), "row title is 25 characters, the limit is 24"),
        (err(row("r").description("d".repeat(73))), "row description is 73 characters, the limit is 72"),
        (err(ListSection::new(Some("s".repeat(25)), [row("a")])), "section title is 25 characters, the limit is 24"),
        (err(ListSection::new(None, [])), "section rows needs at least 1 item(s)"),
        (
            err(ListMessage::new("b", "x".repeat(21), [ListSection::new(None, [row("a")]).unwrap()])),
            "list button is 21 characters, the limit is 20",
        ),
        (
            err(ListMessage::new(
                "b",
                "Ver",
                (0..11).map(|i| ListSection::new(Some(format!("S{i}")), [row(&format!("r{i}"))]).unwrap()),
            )),
            "sections has 11 items, the limit is 10",
        ),
        (
            err(ListMessage::new(
                "b",
                "Ver",
                [
                    ListSection::new(Some("A".into()), (0..6).map(|i| row(&format!("a{i}")))).unwrap(),
                    ListSection::new(Some("B".into()), (0..5).map(|i| row(&format!("b{i}")))).unwrap(),
                ],
            )),
            "rows (all sections) has 11 items, the limit is 10",
        ),
        (
            err(ListMessage::new(
                "b",
                "Ver",
                [ListSection::new(Some("A".into()), [row("a")]).unwrap(), ListSection::new(None, [row("b")]).unwrap()],
            )),
            "sections[1].title must not be empty",
        ),
        (
            err(ListMessage::new(
                "b",
                "Ver",
                [
                    ListSection::new(Some("A".into()), [row("a")]).unwrap(),
                    ListSection::new(Some("B".into()), [row("a")]).unwrap(),
                ],
            )),
            "sections[1].rows[0].id \"a\" appears more than once",
        ),
        (
            err(MediaMessage::image(MediaSource::id("1").unwrap()).caption("c".repeat(1025))),
            "caption is 1025 characters, the limit is 1024",
        ),
        (err(MediaSource::link("file:///etc/passwd")), "media link: must be an http(s) URL"),
        (err(CtaUrl::new("b", "d".repeat(21), "https://x.test")), "display_text is 21 characters, the limit is 20"),
        (
            err(OutgoingMessage::new(to(), Text::new("t").unwrap()).callback_data("c".repeat(513))),
            "biz_opaque_callback_data is 513 characters, the limit is 512",
        ),
        (err(Recipient::phone("+55 11 9abc")), "to: a phone number has only digits"),
        (err(Recipient::phone("123")), "to: a phone number has 5 to 15 digits"),
        (err(Recipient::user_id("us.123")), "to: a user id looks like CC.<letters and digits>"),
        (err(LocationMessage::new(0.0, f64::NAN)), "longitude: must be between -180 and 180"),
        (err(ContactsMessage::new([])), "contacts needs at least 1 item(s)"),
        (err(Template::new("", "pt_BR")), "template name must not be empty"),
        (err(TemplateComponent::quick_reply_button(10, "p")), "button index: must be 0 to 9"),
        (err(TemplateParameter::currency("R$", "brl", 1)), "currency code: an ISO 4217 code such as BRL"),
    ];
    for (got, expected) in cases {
        assert_eq!(got, expected);
    }
    // The limits are exact: the maximum itself is accepted.
    assert!(Text::new("é".repeat(4096)).is_ok());
    assert!(ReplyButtons::new("b", [b("1", &"t".repeat(20)), b("2", "b"), b("3", "c")]).is_ok());
    assert!(ListMessage::new(
        "b",
        "Ver",
        (0..10).map(|i| ListSection::new(Some(format!("S{i}")), [row(&format!("r{i}"))]).unwrap())
    )
    .is_ok());
    assert_eq!(Recipient::parse("US.123abc").unwrap(), Recipient::UserId("US.123abc".into()));
    assert_eq!(Recipient::parse("55 11 91234 5678").unwrap(), Recipient::Phone("5511912345678".into()));
    assert!(!format!("{:?}", to()).contains("2025550101"));
}

#[test]
fn bridge_outbound() {
    let to = to();
    let json = |m: &flowcore::Message| -> Vec<serde_json::Value> {
        to_outgoing(&to, m).unwrap().iter().map(OutgoingMessage::to_json).collect()
    };
    let list = flowcore::Message::List {
        header: Some("Menu".into()),
        body: "Escolha".into(),
        footer: None,
        button: "Ver".into(),
        sections: vec![FlowSection {
            title: None,
            rows: vec![FlowRow { id: "a".into(), title: "A".into(), description: Some("primeira".into()) }],
        }],
    };
    assert_json_snapshot!("bridge_list", json(&list));
    let media = flowcore::Message::Media {
        kind: MediaKind::Document,
        link: "https://cdn.example.com/n.pdf".into(),
        caption: Some("Nota".into()),
        filename: Some("n.pdf".into()),
    };
    assert_json_snapshot!("bridge_media", json(&media));
    let template = flowcore::Message::Template {
        name: "order_update".into(),
        language: "pt_BR".into(),
        components: json!([{ "type": "body", "parameters": [{ "type": "text", "text": "Ana" }] }]),
    };
    assert_json_snapshot!("bridge_template", json(&template));
    let buttons = flowcore::Message::Buttons {
        header: Some("Oi".into()),
        body: "Continuar?".into(),
        footer: Some("rodapé".into()),
        buttons: vec![Choice { id: "yes".into(), title: "Sim".into() }],
    };
    assert_json_snapshot!("bridge_buttons", json(&buttons));

    // A long text splits on word boundaries; nothing is lost and nothing is cut mid-character.
    let words: Vec<String> = (0..3000).map(|i| format!("palavra{i}é")).collect();
    let text = words.join(" ");
    let out = json(&flowcore::Message::Text { text: text.clone() });
    assert!(out.len() >= 2);
    let bodies: Vec<String> = out.iter().map(|m| m["text"]["body"].as_str().unwrap().to_owned()).collect();
    assert!(bodies.iter().all(|b| b.chars().count() <= 4096));
    assert_eq!(bodies.join(" "), text);

    // Flow data over the limits is an error value.
    let too_many_rows = flowcore::Message::List {
        header: None,
        body: "b".into(),
        footer: None,
        button: "Ver".into(),
        sections: vec![FlowSection {
            title: None,
            rows: (0..11).map(|i| FlowRow { id: format!("r{i}"), title: "t".into(), description: None }).collect(),
        }],
    };
    assert_eq!(to_outgoing(&to, &too_many_rows).unwrap_err().field(), "section rows");
    let empty = flowcore::Message::Text { text: "   ".into() };
    assert_eq!(to_outgoing(&to, &empty).unwrap_err(), BuildError::Empty { field: "text body".into() });
    let bad_components =
        flowcore::Message::Template { name: "t".into(), language: "en".into(), components: json!("x") };
    assert!(to_outgoing(&to, &bad_components).is_err());
}
