def test_login_page(client):
    assert client.get("/login").status_code == 200
