package redfish

// link is a Redfish reference to another resource.
type link struct {
	ID string `json:"@odata.id"`
}

// status is a resource's Redfish Status.
type status struct {
	State  string `json:"State"`
	Health string `json:"Health,omitempty"`
}

var enabledOK = status{State: "Enabled", Health: "OK"}

// collection is a Redfish resource collection.
type collection struct {
	ID      string `json:"@odata.id"`
	Type    string `json:"@odata.type"`
	Name    string `json:"Name"`
	Count   int    `json:"Members@odata.count"`
	Members []link `json:"Members"`
}

func newCollection(id, typ, name string, members []string) collection {
	c := collection{ID: id, Type: "#" + typ + "." + typ, Name: name, Count: len(members), Members: make([]link, 0, len(members))}
	for _, m := range members {
		c.Members = append(c.Members, link{m})
	}
	return c
}

func (s *Service) getRoot(*request) (any, error) {
	uuid := s.UUID
	if uuid == "" {
		uuid = defaultUUID
	}
	return map[string]any{
		"@odata.id":      root + "/",
		"@odata.type":    "#ServiceRoot.v1_5_0.ServiceRoot",
		"Id":             "RootService",
		"Name":           "Stargate Redfish Service",
		"Product":        "Stargate",
		"Vendor":         "Stargate",
		"RedfishVersion": redfishVer,
		"UUID":           uuid,
		"Systems":        link{systemsPath},
		"Managers":       link{managersPath},
		"SessionService": link{sessionSvc},
		"Links":          map[string]any{"Sessions": link{sessionsPath}},
	}, nil
}

func (s *Service) getSessionService(*request) (any, error) {
	return map[string]any{
		"@odata.id":      sessionSvc,
		"@odata.type":    "#SessionService.v1_1_8.SessionService",
		"Id":             "SessionService",
		"Name":           "Session Service",
		"Description":    "Sessions are not offered: use HTTP basic authentication.",
		"ServiceEnabled": false,
		"SessionTimeout": 30,
		"Status":         status{State: "Disabled"},
		"Sessions":       link{sessionsPath},
	}, nil
}

func (s *Service) getSessions(*request) (any, error) {
	return newCollection(sessionsPath, "SessionCollection", "Sessions", nil), nil
}

func (s *Service) getSystems(req *request) (any, error) {
	ids, err := s.authorizedIDs(req)
	if err != nil {
		return nil, err
	}
	members := make([]string, len(ids))
	for i, id := range ids {
		members[i] = systemsPath + "/" + id
	}
	return newCollection(systemsPath, "ComputerSystemCollection", "Computer System Collection", members), nil
}

func (s *Service) getManagers(req *request) (any, error) {
	ids, err := s.authorizedIDs(req)
	if err != nil {
		return nil, err
	}
	members := make([]string, len(ids))
	for i, id := range ids {
		members[i] = managersPath + "/" + id
	}
	return newCollection(managersPath, "ManagerCollection", "Manager Collection", members), nil
}

func (s *Service) getManager(req *request) (any, error) {
	sys, err := s.system(req)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"@odata.id":       req.base,
		"@odata.type":     "#Manager.v1_5_0.Manager",
		"Id":              sys.ID,
		"Name":            "BMC of " + sys.ID,
		"ManagerType":     "BMC",
		"Model":           "Stargate simulated BMC",
		"FirmwareVersion": "1.0",
		"UUID":            derivedUUID("manager/" + sys.ID),
		"Status":          enabledOK,
		"VirtualMedia":    link{req.base + "/VirtualMedia"},
		"Links":           map[string]any{"ManagerForServers": []link{{systemsPath + "/" + sys.ID}}},
	}, nil
}
